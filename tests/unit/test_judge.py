"""Judges: verdict parsing, the both-orders rule, win rates in a group, the verdict task and reward,
and judge evaluation metrics, each against values worked out by hand."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.eval.judge import PairJudgment, judge_metrics, wilson
from posttrain.judges.parse import load_template, parse_pairwise, parse_pointwise, question_text, render
from posttrain.judges.rules import PairTally, against_reference, agreed, group_win_rates, paired_rewards
from posttrain.rewards.judge import VerdictComponent, runs
from posttrain.tasks.arithmetic import extract_answer
from posttrain.tasks.base import Example
from posttrain.tasks.judging import JudgeTask, corrupt_solution, partner_id, worked_solution
from posttrain.tasks.registry import make_task


@pytest.mark.parametrize(
    ("text", "side"),
    [
        ("[[A]]", "A"),
        ("<think>B repeats the step, so [[A]] or [[B]]? A's 3+4=8 is wrong.</think> [[B]]", "B"),
        ("verdict: [[ A ]]\n", "A"),
        ("I prefer [[B]]. On reflection: [[A]]", "A"),  # the last marker decides
        ("A is better", None),  # no marker
        ("[[C]]", None),
        ("[[AB]]", None),
        ("[A]", None),
        ("", None),
    ],
)
def test_parse_pairwise(text: str, side: str | None) -> None:
    assert parse_pairwise(text) == side


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("<think>step 2 adds 3 and 4 to get 7, correct</think>[[8]]", 8.0),
        ("Score: 6/10", 6.0),
        ("score=10", 10.0),
        ("[[7.5]]", 7.5),
        ("first thought [[2]], but the last step is right: [[9]]", 9.0),
        ("[[0]]", 0.0),
        ("[[11]]", None),  # outside 0-10: malformed, not clipped
        ("[[-1]]", None),
        ("it is good", None),
        ("[[A]]", None),
    ],
)
def test_parse_pointwise(text: str, score: float | None) -> None:
    assert parse_pointwise(text) == score


def test_templates_render_their_fields_and_leave_other_braces(tmp_path: Path) -> None:
    assert render(load_template("short", "pairwise"), " 2+2=? ", ("#4", "#5")) == "2+2=?\nA:\n#4\nB:\n#5\nbetter:"
    j1 = render(load_template("j1", "pointwise"), "q", ("r",))
    assert "[Question]\nq\n\n[Response]\nr" in j1 and "<think>" in j1
    own = tmp_path / "t.txt"
    own.write_text("Solve \\boxed{} {question} | {answer}")
    assert render(load_template(str(own), "pointwise"), "x", ("y",)) == "Solve \\boxed{} x | y"
    with pytest.raises(ConfigError, match=r"needs \{answer_a\}, \{answer_b\}"):
        load_template(str(own), "pairwise")
    with pytest.raises(ConfigError, match="neither a built-in judge template"):
        load_template(str(tmp_path / "missing.txt"), "pairwise")
    assert question_text([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == "u"


def test_both_orders_must_agree() -> None:
    assert agreed("A", "B") == "first"  # the first response won in both orders
    assert agreed("B", "A") == "second"
    assert agreed("A", "A") is None and agreed("B", "B") is None  # the slot, not the response, decided
    assert agreed(None, "B") is None and agreed("A", None) is None
    assert against_reference("A", "B") == 1.0 and against_reference("B", "A") == 0.0
    assert against_reference("A", "A") is None and against_reference(None, None) is None


def test_win_rates_in_a_group_from_a_hand_made_verdict_table() -> None:
    # verdict[(i, k)]: sample i shown as A, sample k as B. 0 beats 1 and 2 in both orders;
    # 1 vs 2 is position-biased (A both times): left out; 3's verdicts never parse.
    table = {(0, 1): "A", (1, 0): "B", (0, 2): "A", (2, 0): "B", (1, 2): "A", (2, 1): "A"}
    tally = PairTally()
    rates = group_win_rates(4, lambda i, k: table.get((i, k)), tally)  # type: ignore[arg-type,return-value]
    assert rates == [1.0, 0.0, 0.0, None]  # 3: no decided pair -> missing, not 0
    # 6 pairs x 2 orders; the 3 pairs with sample 3 are unparsed twice each
    assert (tally.verdicts, tally.unparsed, tally.pairs, tally.consistent) == (12, 6, 3, 2)
    # 1 beats 2 once 2 -> 1 is fixed: 1's rate is 1/2 (beat 2, lost to 0), 2's is 0/2
    table[(2, 1)] = "B"
    assert group_win_rates(3, lambda i, k: table.get((i, k))) == [1.0, 0.5, 0.0]  # type: ignore[arg-type,return-value]


def test_paired_rewards_need_both_orders_right() -> None:
    assert paired_rewards([1, 1, 0, 0], [1, 0, 1, 0]) == [1.0, 0.0, 0.0, 0.0]
    assert paired_rewards([1, 0], None) == [1.0, 0.0]  # no other order in the batch: its own verdict
    assert paired_rewards([1, 0], [1]) == [1.0, 0.0]


def judge_task(*extra: str) -> JudgeTask:
    cfg = load_config(None, ["data.task=judge", "data.judge.template=short", "data.arithmetic.num_operands=3",
                             "data.arithmetic.digits=1", *extra])  # fmt: skip
    task = make_task(cfg.data)
    assert isinstance(task, JudgeTask)
    return task


def test_the_verdict_task_draws_both_orders_side_by_side() -> None:
    task = judge_task()
    examples = task.examples("train", 6, 0)
    assert [ex.answer for ex in examples] == ["A", "B"] * 3
    for first, second in zip(examples[::2], examples[1::2]):
        assert partner_id(first.id) == second.id and partner_id(second.id) == first.id
        assert isinstance(first.prompt, str) and isinstance(second.prompt, str)
        a = first.prompt.split("\nA:\n")[1].split("\nB:\n")
        b = second.prompt.split("\nA:\n")[1].split("\nB:\n")
        assert a[0] == b[1].removesuffix("\nbetter:") and a[1].removesuffix("\nbetter:") == b[0]  # swapped
    assert task.verify(examples[0], "<think>...</think>[[A]]") == 1.0
    assert task.verify(examples[1], "[[A]]") == 0.0 and task.verify(examples[1], "no verdict") == 0.0
    assert len(task.examples("train", 5, 0)) == 5
    assert [e.id for e in task.examples("test", 4, 1)] == [e.id for e in task.examples("test", 4, 1)]  # seeded


def test_corrupted_solutions_are_wrong_and_step_errors_carry_through() -> None:
    ex = Example(id="37+48-15", prompt="37+48-15=?\n", answer="70", completion=worked_solution("37+48-15"))
    assert ex.completion == "37+48=85\n85-15=70\n#70"
    for seed in range(20):
        for how in ("answer", "step"):
            bad = corrupt_solution(ex, random.Random(seed), how)  # type: ignore[arg-type]
            assert extract_answer(bad) != "70"
            if how == "step":  # every later step starts from the previous (wrong) result, and adds up
                lines = bad.split("\n")
                value = None
                for line in lines[:-1]:
                    left, result = line.split("=")
                    if value is not None:
                        assert left.startswith(str(value))
                    value = int(result)
                assert lines[-1] == f"#{value}"
    assert corrupt_solution(ex, random.Random(0), "answer").startswith("37+48=85\n85-15=70\n#")


def test_verdict_reward_applies_both_orders_to_matching_samples() -> None:
    task = judge_task()
    ab, ba = task.examples("train", 2, 3)
    examples = [ab, ab, ab, ba, ba, ba]  # G = 3 samples of each order, as the RL loop lays them out
    texts = ["[[A]]", "[[A]]", "[[B]]", "[[B]]", "[[A]]", "[[B]]"]
    # right: ab 1 1 0, ba 1 0 1 -> sample j of both: 1 0 0
    assert VerdictComponent(task).score(examples, [e.prompt for e in examples], texts) == [1, 0, 0, 1, 0, 0]
    per_order = judge_task("data.judge.reward=per_order")
    assert VerdictComponent(per_order).score(examples, [e.prompt for e in examples], texts) == [1, 1, 0, 1, 0, 1]
    assert runs(examples) == [[0, 1, 2], [3, 4, 5]]


def test_pointwise_verdict_reward_compares_matching_samples() -> None:
    task = judge_task("data.judge.mode=pointwise")
    good, bad = task.examples("train", 2, 0)
    assert (good.answer, bad.answer) == ("good", "bad") and good.prompt.endswith("score:")
    examples = [good, good, bad, bad]
    texts = ["[[8]]", "[[3]]", "[[2]]", "[[9]]"]  # sample 0: 8 > 2 right; sample 1: 3 < 9 wrong
    assert VerdictComponent(task).score(examples, [e.prompt for e in examples], texts) == [1, 0, 1, 0]
    assert task.verify(good, "[[6]]") == 1.0 and task.verify(bad, "[[6]]") == 0.0 and task.verify(bad, "[[5]]") == 0.0


def test_verdict_reward_needs_the_judge_task() -> None:
    with pytest.raises(ConfigError, match="set data.task=judge"):
        VerdictComponent(make_task(load_config(None, []).data))


def test_wilson_interval_matches_the_closed_form() -> None:
    lo, hi = wilson(1, 4)  # p = 0.25, z = 1.96: centre 0.3725, half-width 0.3269
    assert lo == pytest.approx(0.0456, abs=1e-4) and hi == pytest.approx(0.6994, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == pytest.approx(1.0)
    assert all(v != v for v in wilson(0, 0))  # nan


def test_judge_metrics_on_hand_made_verdicts() -> None:
    rows = [
        PairJudgment("A", "B", "math"),  # right in both orders
        PairJudgment("A", "A", "math"),  # position bias: right only as A
        PairJudgment("B", "A", "chat"),  # consistently wrong
        PairJudgment(None, "B", "chat"),  # one verdict unparsed
    ]
    m = judge_metrics(rows, "pairwise")
    got = {k: (m[k]["k"], m[k]["n"]) for k in ("accuracy", "accuracy_ab", "accuracy_ba", "position_consistency")}
    assert got == {"accuracy": (1, 4), "accuracy_ab": (2, 4), "accuracy_ba": (2, 4), "position_consistency": (2, 4)}
    assert (m["parse_failure_rate"]["k"], m["parse_failure_rate"]["n"]) == (1, 8)
    assert (m["accuracy"]["lo"], m["accuracy"]["hi"]) == wilson(1, 4)
    subsets = m["subsets"]
    assert subsets["math"]["accuracy"]["value"] == 0.5 and subsets["math"]["position_consistency"]["value"] == 0.5
    assert subsets["chat"]["accuracy"]["value"] == 0.0 and subsets["chat"]["parse_failure_rate"]["k"] == 1
    points = judge_metrics([PairJudgment(8.0, 2.0), PairJudgment(5.0, 5.0), PairJudgment(None, 1.0)], "pointwise")
    assert points["accuracy"]["k"] == 1 and points["ties"]["k"] == 1 and points["parse_failure_rate"]["k"] == 1


def test_judge_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="kind: judge needs path"):
        load_config(None, ["reward.components=[{kind: judge}]"])
    with pytest.raises(ConfigError, match="data.judge.source=preferences needs data.path"):
        load_config(None, ["data.task=judge", "data.judge.source=preferences"])
    from posttrain.recipes.judge import judge_config

    with pytest.raises(ConfigError, match="must be even"):
        judge_config(load_config(None, ["rollout.prompts_per_step=3"]))
    cfg = judge_config(load_config(None, []))
    assert cfg.data.task == "judge" and [c.kind for c in cfg.reward.components] == ["verdict"]


def test_self_taught_contrasting_pairs_and_the_rejection_filter() -> None:
    from posttrain.judges.self_taught import arithmetic_contrast, keep_judgments, perturb_expression

    for seed in range(20):
        other = perturb_expression("37+48-5", random.Random(seed))
        assert other != "37+48-5" and [len(x) for x in other.replace("-", "+").split("+")] == [2, 2, 1]
    pair = arithmetic_contrast("3+4", "3+4=?\n", random.Random(0))
    assert pair.chosen == "3+4=7\n#7" and pair.rejected != pair.chosen and extract_answer(pair.rejected) != "7"
    judgments = ["<think>x</think>[[A]]", "[[B]]", "no verdict", "[[A]] then [[B]]", "[[ A ]]"]
    kept = keep_judgments(judgments, "A", random.Random(0), keep=5)
    assert sorted(kept) == ["<think>x</think>[[A]]", "[[ A ]]"]  # the last marker decides
    assert (
        len(keep_judgments(judgments, "A", random.Random(0))) == 1
        and keep_judgments(["[[B]]"], "A", random.Random(0)) == []
    )


def test_a_generators_pair_is_kept_only_when_it_has_a_known_winner() -> None:
    from posttrain.judges.self_taught import generated_pairs

    questions = ["2+3=?", "7-4=?", "5+1=?", "9-2=?", "3+3=?"]
    others = ["2-3=?", "7-4=?", "", "9+2=?", "3-3=?"]  # x' equal to x, then an empty x'
    replies = ["#5", "#3", "#6", "#7 ", "#6"]
    to_others = ["#-1", "#3", "#4", " #7", None]  # answers equal once stripped, then a reply too long
    (pair,) = generated_pairs(2, questions, others, replies, to_others)
    assert (pair.id, pair.question, pair.chosen, pair.rejected) == ("ste:2:0", "2+3=?", "#5", "#-1")
    with pytest.raises(ValueError):  # a reply list that lost an entry is a bug, never a shorter run
        generated_pairs(0, questions, others, replies, to_others[:-1])


def test_a_judge_samples_with_the_policys_kind_of_engine(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, on Ray actors, or a second vLLM engine with its own GPU share beside a vLLM policy."""
    import posttrain.rollout.factory as factory
    from posttrain.rewards.judge import engine_backend
    from posttrain.rewards.registry import build_reward

    assert [engine_backend("local"), engine_backend("ray"), engine_backend("local", "vllm")] == ["torch", "ray", "vllm"]
    assert engine_backend("local", "ray") == "ray"
    seen = []

    class Closed:
        def close(self) -> None:
            pass

    def fake_build_engine(cfg, model, tokenizer, path):  # the factory's call is what is checked, not vLLM itself
        seen.append(cfg.engine)
        return Closed()

    monkeypatch.setattr(factory, "build_engine", fake_build_engine)
    judge = f"{{kind: judge, path: {tiny_dir}, template: short, gpu_memory_utilization: 0.25}}"
    reward = load_config(None, [f"reward.components=[{judge}]"]).reward
    task = make_task(load_config(None, []).data)
    build_reward(reward, task, engine="vllm").close()
    build_reward(reward, task).close()
    assert [(e.backend, e.gpu_memory_utilization) for e in seen] == [("vllm", 0.25), ("torch", 0.25)]
    with pytest.raises(ConfigError, match="gpu_memory_utilization"):
        load_config(None, [f"reward.components=[{judge.replace('0.25', '1.5')}]"])
