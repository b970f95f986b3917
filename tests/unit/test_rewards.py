"""Composable rewards: components, weights, the deadline pool, failures counted and never scored 0."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.config.reward import RewardComponentConfig, RewardConfig, parse_function
from posttrain.errors import ConfigError
from posttrain.rewards.base import ScoreReport, to_score
from posttrain.rewards.isolate import Outcome, process_pool
from posttrain.rewards.pool import LocalScorer
from posttrain.rewards.registry import build_reward
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.base import Example
from posttrain.tasks.jsonl import JsonlTask
from tests.worker_checks import echo, misbehave

FLAKY = """
import time

def flaky(prompts, completions, examples):
    out = []
    for c in completions:
        if c == "boom":
            raise ValueError("cannot parse " + c)
        if c == "hang":
            time.sleep(600)
        out.append({"none": None, "text": "abc", "nan": float("nan"), "long": 1.0}.get(c, float(len(c))))
    if "long" in completions:
        out.append(2.0)  # one score too many
    return out
"""


def python_cfg(function: str, weight: float = 1.0, timeout_s: float = 1.0, **kw: object) -> RewardConfig:
    return RewardConfig([RewardComponentConfig("python", weight=weight, function=function, **kw)], 2, timeout_s)  # type: ignore[arg-type]


EX = Example("1+2", "1+2=?\n", answer="3")


def test_a_python_reward_that_raises_or_hangs_leaves_only_those_samples_unscored(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    scorer = build_reward(python_cfg(f"{tmp_path / 'flaky.py'}:flaky"), ArithmeticTask())
    try:
        assert scorer.score([EX], ["ok"]).scores == [2.0]  # the workers are up: what follows is timed
        texts = ["ab", "boom", "hang", "abc", "none", "text", "nan", "long", "x"]
        t0 = time.monotonic()
        report = scorer.score([EX] * len(texts), texts)
        assert time.monotonic() - t0 < 1.0 + 2.5  # one deadline, not 600 s
    finally:
        scorer.close()
    assert report.scores == [2.0, None, None, 3.0, None, None, None, None, 1.0]
    assert report.components == {"flaky": report.scores}
    assert (report.errors, report.timeouts, report.missing, report.skipped) == (4, 1, 1, 0)
    assert report.unscored == 6
    messages = "\n".join(report.messages)
    assert "sample 1: ValueError: cannot parse boom" in messages
    assert "sample 2: ran past its 1 s limit (reward.timeout_s)" in messages


def test_a_failure_skips_the_rest_of_its_group(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    cfg = RewardConfig(workers=1, timeout_s=5.0, components=python_cfg(f"{tmp_path / 'flaky.py'}:flaky").components)
    scorer = build_reward(cfg, ArithmeticTask())  # one worker: the order of calls is the samples' order
    try:
        report = scorer.score([EX] * 4, ["boom", "a", "a", "ab"], groups=[0, 0, 0, 1])
    finally:
        scorer.close()
    assert report.scores == [None, None, None, 2.0]
    assert (report.errors, report.skipped) == (1, 2)


def test_weights_combine_and_components_are_logged() -> None:
    """reward = 1.0 * verifier + 0.2 * brevity, brevity = 1 - len / 10.

    "#3" (right, 2 chars): 1.0 + 0.2 * 0.8 = 1.16; "#4" (wrong): 0.0 + 0.16 = 0.16;
    "1+2=3\\n#3" (right, 8 chars): 1.0 + 0.2 * 0.2 = 1.04.
    Means: verifier (1 + 0 + 1) / 3; brevity (0.8 + 0.8 + 0.2) / 3 = 0.6.
    """
    cfg = RewardConfig(
        [
            RewardComponentConfig("verifier"),
            RewardComponentConfig("python", 0.2, function="tests.unit.reward_fns:brevity"),
        ],
        timeout_s=30.0,
    )
    scorer = build_reward(cfg, ArithmeticTask())
    try:
        report = scorer.score([EX] * 3, ["#3", "#4", "1+2=3\n#3"])
    finally:
        scorer.close()
    assert report.scores == pytest.approx([1.16, 0.16, 1.04])
    assert report.components["verifier"] == [1.0, 0.0, 1.0]
    assert report.components["brevity"] == pytest.approx([0.8, 0.8, 0.2])
    assert report.component_means() == pytest.approx({"verifier": 2 / 3, "brevity": 0.6})
    assert report.component_totals()["verifier"] == (2.0, 3)


def test_one_missing_component_leaves_the_sample_unscored_and_names_the_component(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    cfg = RewardConfig(
        [
            RewardComponentConfig("verifier", 1.0),
            RewardComponentConfig("python", 0.5, function=f"{tmp_path}/flaky.py:flaky"),
        ],
        timeout_s=30.0,
    )
    scorer = build_reward(cfg, ArithmeticTask())
    try:
        report = scorer.score([EX] * 2, ["#3", "none"])
    finally:
        scorer.close()
    assert report.scores == [2.0, None]  # 1.0 * 1 + 0.5 * len("#3")
    assert report.components == {"verifier": [1.0, 0.0], "flaky": [2.0, None]}
    assert report.missing == 1 and report.errors == 0
    assert report.messages == ["sample 1: flaky: returned None"]
    assert math.isclose(report.component_means()["flaky"], 2.0)


def test_the_default_reward_is_the_verifier_in_process_with_the_verifiers_scores() -> None:
    scorer = build_reward(RewardConfig(), ArithmeticTask())
    assert scorer.pool is None  # the built-in task's check cannot hang: no workers started
    task = ArithmeticTask()
    texts = ["#3", "#4", "no answer", "1+2=3\n#3"]
    assert scorer.score([EX] * 4, texts).scores == [task.verify(EX, t) for t in texts]
    report = scorer.score([EX, Example("x", "?")], ["#3", "#3"])
    assert report.scores == [1.0, None] and report.errors == 1  # no gold answer: unscored, not 0
    assert report.messages == ["sample 1: ValueError: the problem has no gold answer"]


def test_module_functions_positional_and_trl_shapes() -> None:
    for fn, want in (("positional", [2.0, 3.0]), ("trl_style", [0.0, 1.0])):
        scorer = build_reward(python_cfg(f"tests.unit.reward_fns:{fn}", timeout_s=30.0), ArithmeticTask())
        try:
            assert scorer.score([EX] * 2, ["ab", "axb"]).scores == want
        finally:
            scorer.close()


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("tests.unit.reward_fns:missing", "has no 'missing'"),
        ("tests.unit.reward_fns:NOT_A_FUNCTION", "is a int, not a function"),
        ("tests.unit.no_such_module:f", "ModuleNotFoundError"),
        ("nowhere/file.py:f", "FileNotFoundError"),
    ],
)
def test_a_function_that_does_not_load_is_a_config_error_at_build_time(function: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r"^reward.components.0.function: cannot load") as info:
        build_reward(python_cfg(function), ArithmeticTask())
    assert message in str(info.value)


def test_a_signature_that_fits_neither_form_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "two.py").write_text("def two(a, b):\n    return [0.0]\n")
    with pytest.raises(ConfigError, match=r"^reward.components.0.function: .*takes neither"):
        build_reward(python_cfg(f"{tmp_path}/two.py:two"), ArithmeticTask())


def test_math_verify_on_a_gold_that_hangs_sympy_times_out_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"prompt": "big?", "answer": "9^{9^{9^{9}}}"}\n{"prompt": "half?", "answer": "\\\\frac{1}{2}"}\n')
    task = JsonlTask(str(path), verifier="math_verify", eval_path=str(path))
    big, half = sorted(task.examples("test", None, 0), key=lambda ex: ex.prompt)
    scorer = build_reward(RewardConfig(workers=2, timeout_s=1.5), task)
    try:
        t0 = time.monotonic()
        report = scorer.score([big, half, half], ["$\\boxed{3}$", "$\\boxed{0.5}$", "$\\boxed{2}$"])
        assert time.monotonic() - t0 < 30  # the forkserver's start (sympy) plus one deadline
    finally:
        scorer.close()
    assert report.scores == [None, 1.0, 0.0]  # the hang is counted, never scored 0
    assert report.timeouts == 1 and report.errors == 0
    unparseable = Example("u", "?", answer="")
    scorer = build_reward(RewardConfig(workers=1, timeout_s=30.0), task)
    try:
        report = scorer.score([unparseable], ["$1$"])
    finally:
        scorer.close()
    assert report.scores == [None] and report.errors == 1
    assert "does not parse as mathematics" in report.messages[0]


def test_config_yaml_builds_the_components_and_names_bad_ones(tmp_path: Path) -> None:
    (tmp_path / "r.py").write_text(
        "def brevity(prompts, completions, examples):\n    return [0.0] * len(completions)\n"
    )
    good = tmp_path / "good.yaml"
    good.write_text(
        "reward:\n"
        "  timeout_s: 2\n"
        "  components:\n"
        "    - {kind: verifier, weight: 1.0}\n"
        f"    - {{kind: python, function: '{tmp_path / 'r.py'}:brevity', weight: 0.2}}\n"
    )
    cfg = load_config(good)
    assert [c.kind for c in cfg.reward.components] == ["verifier", "python"]
    assert cfg.reward.components[1].weight == 0.2 and cfg.reward.timeout_s == 2.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("reward:\n  components:\n    - kind: verifier\n    - kind: verifyer\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert str(info.value) == (
        f"{bad}:4: reward.components.1.kind: 'verifyer' is not one of 'verifier', 'python', 'reward_model', 'judge', 'verdict'; "
        "did you mean 'verifier'?"
    )
    missing = tmp_path / "missing.yaml"
    missing.write_text("reward:\n  components:\n    - kind: python\n      weight: 0.5\n")
    with pytest.raises(ConfigError, match=rf"^{missing}:3: reward.components.0.function: kind: python needs function"):
        load_config(missing)
    no_file = tmp_path / "nofile.yaml"
    no_file.write_text("reward:\n  components:\n    - {kind: verifier}\n    - {kind: python, function: nope.py:f}\n")
    with pytest.raises(ConfigError, match=rf"^{no_file}:4: reward.components.1.function: no file 'nope.py'"):
        load_config(no_file)
    with pytest.raises(
        ConfigError, match=r"^command line: reward.components.1.name: components 0 and 1 are both named 'verifier'"
    ):
        load_config(None, ["reward.components=[{kind: verifier}, {kind: verifier, weight: 2}]"])
    with pytest.raises(ConfigError, match=r"^command line: reward.components: expected a list"):
        load_config(None, ["reward.components=verifier"])
    no_kind = tmp_path / "nokind.yaml"
    no_kind.write_text("reward:\n  components:\n    - {kind: verifier}\n    - {weight: 2}\n")
    with pytest.raises(ConfigError, match=rf"^{no_kind}:4: reward.components.1: missing key 'kind'$"):
        load_config(no_kind)


def test_parse_function() -> None:
    assert parse_function("my_rewards.py:brevity").file == "my_rewards.py"
    assert parse_function("pkg.mod:fn").module == "pkg.mod"
    with pytest.raises(ValueError, match="expected file.py:function"):
        parse_function("brevity")


def test_to_score_accepts_numbers_only() -> None:
    assert to_score(1) == 1.0 and to_score(0.5) == 0.5
    with pytest.raises(TypeError, match="not a number"):
        to_score("1.0")
    with pytest.raises(ValueError, match="returned inf"):
        to_score(math.inf)


def test_the_pool_reports_each_outcome_and_recovers() -> None:
    jobs = [(misbehave, ("x", "x")), (misbehave, ("x", "hang")), (misbehave, ("z", "raise")), (misbehave, ("a", "die"))]
    with process_pool(2, 0.5) as pool:
        got = pool.run([*jobs, (echo, ("w", "w"))])
        again = pool.run([(echo, ("q", "q"))], accept=lambda v: Outcome("missing") if v[1] == 1.0 else Outcome("ok", v))
    assert [o.status for o in got] == ["ok", "timeout", "error", "error", "ok"]
    assert got[0].value == ("x", 1.0) and got[2].error == "RuntimeError: boom"
    assert "died" in (got[3].error or "")
    assert again == [Outcome("missing")]


def test_the_old_local_scorer_counts_like_before() -> None:
    def picky(examples: list[Example], texts: list[str]) -> list[float]:
        if "boom" in texts:
            raise ZeroDivisionError("the parser divided by zero")
        return [float(t == "good") for t in texts]

    report = LocalScorer(picky).score([EX] * 4, ["good", "boom", "bad", "good"])
    assert report.scores == [1.0, None, 0.0, 1.0]
    assert report.messages == ["sample 1: ZeroDivisionError: the parser divided by zero"]
    grouped = LocalScorer(picky).score([EX] * 4, ["boom", "good", "bad", "good"], groups=[0, 0, 1, 1])
    assert grouped.scores == [None, None, 0.0, 1.0] and (grouped.errors, grouped.skipped) == (1, 1)
    assert isinstance(grouped, ScoreReport)
