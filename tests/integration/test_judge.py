"""Judges on the tiny model: GRPO on verdicts raises the both-orders reward, a judge as a reward component
(unparsed verdicts counted, never 0; its counts in the metrics), `posttrain judge eval` and `posttrain judge`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.data.tokenize import encode_prompt
from posttrain.judges.parse import parse_pairwise
from posttrain.models.io import load_model, load_tokenizer
from posttrain.recipes.judge import train_judge
from posttrain.recipes.online import rollout_metrics
from posttrain.recipes.sft import train_sft
from posttrain.records import Completion, ScoredGroups
from posttrain.rewards.registry import build_reward
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.judging import worked_solution
from posttrain.tasks.registry import make_task
from posttrain.train.metrics import read_metrics

SHORT = ["data.task=judge", "data.judge.template=short"]
ROWS = [
    {"prompt": "2+3=?", "chosen": "#5", "rejected": "#6", "subset": "add"},
    {"prompt": "4-1=?", "chosen": "#3", "rejected": "#1", "subset": "sub"},
]


@pytest.fixture(scope="module")
def format_judge(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """The tiny model after a format warm-up: SFT on random verdicts of arithmetic pairs (it says [[A]] or [[B]])."""
    torch.set_num_threads(1)  # module fixtures run before the per-test thread setting
    out = tmp_path_factory.mktemp("judge") / "sft"
    cfg = load_config(None, [*SHORT, "data.arithmetic.digits=1", "data.arithmetic.num_operands=2",
                             "data.num_train=64", f"model.path={tiny_dir}", f"output_dir={out}", "train.max_steps=30",
                             "train.batch_size=16", "train.micro_batch_size=16", "optim.lr=1e-2"])  # fmt: skip
    return train_sft(cfg)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def pair_config(pairs: Path, *extra: str):
    return load_config(None, [*SHORT, "data.judge.source=preferences", f"data.path={pairs}",
                              f"data.eval_path={pairs}", *extra])  # fmt: skip


@torch.no_grad()
def expected_both_orders_reward(model_dir: Path, pairs: Path) -> float:
    """Mean over pairs of P(right verdict as A) * P(right verdict as B): the both-orders reward's expectation."""
    tok, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    examples = make_task(pair_config(pairs).data).examples("train", None, 0)
    probs = []
    for ex in examples:
        prompt = encode_prompt(tok, ex.prompt)
        verdict = tok(f"[[{ex.answer}]]", add_special_tokens=False)["input_ids"]
        logits = model(torch.tensor([prompt + verdict])).logits[0, len(prompt) - 1 : -1]
        probs.append(float(logits.log_softmax(-1).gather(-1, torch.tensor(verdict)[:, None]).sum().exp()))
    return sum(a * b for a, b in zip(probs[::2], probs[1::2])) / (len(probs) // 2)


def test_grpo_on_verdicts_raises_the_both_orders_reward(tmp_path: Path, format_judge: Path, pairs: Path) -> None:
    before = expected_both_orders_reward(format_judge, pairs)
    cfg = pair_config(pairs, f"model.path={format_judge}", f"output_dir={tmp_path / 'g'}", "train.max_steps=12",
                      "rollout.prompts_per_step=4", "rollout.samples_per_prompt=8", "sampling.max_new_tokens=8",
                      "grpo.drop_uniform_groups=false", "optim.lr=1e-3")  # fmt: skip
    # lr 1e-3: 0.137 -> 0.19-0.21 over seeds 0-2; at 3e-3 the judge collapsed to one letter on 2 of 3 seeds
    final = train_judge(cfg)
    after = expected_both_orders_reward(final, pairs)
    assert after > before + 0.02, (before, after)
    records = read_metrics(tmp_path / "g" / "metrics.jsonl")
    assert len(records) == 12 and all(0.0 <= r["reward/verdict"] <= 1.0 for r in records)


def test_a_judge_reward_counts_unparsed_verdicts_and_never_scores_them_0(format_judge: Path) -> None:
    task = ArithmeticTask(
        load_config(None, ["data.arithmetic.digits=1", "data.arithmetic.num_operands=2"]).data.arithmetic
    )
    problems = task.examples("train", 2, 0)
    examples = [ex for ex in problems for _ in range(3)]  # two prompts, G = 3 samples each
    texts = ["#1", "#2", "#3", "#4", "#5", "#6"]
    judge = "{kind: judge, path: %s, mode: %s, template: short, max_new_tokens: 8}"
    # the format judge says [[A]]/[[B]], never a 0-10 score: every pointwise verdict is unparsed
    pointwise = build_reward(
        load_config(None, [f"reward.components=[{judge % (format_judge, 'pointwise')}]"]).reward, task
    )
    report = pointwise.score(examples, texts, groups=None)
    assert report.scores == [None] * 6 and report.missing == 6  # missing, counted; no 0 anywhere
    assert report.counts["judge/parse_failures"] == 6 and report.counts["judge/judge_calls"] == 6
    # pairwise: both orders of the 3 pairs of each group: 12 verdicts, all of the [[A]]/[[B]] form
    pairwise = build_reward(
        load_config(None, [f"reward.components=[{judge % (format_judge, 'pairwise')}]"]).reward, task
    )
    report = pairwise.score(examples, texts, groups=None)
    counts = report.counts
    assert counts["judge/judge_calls"] == 12 and counts["judge/parse_failures"] == 0 and counts["judge/pairs"] == 6
    assert 0 <= counts["judge/consistent_pairs"] <= 6 and counts["judge/tokens"] > 0
    for s in report.scores:
        assert s is None or 0.0 <= s <= 1.0
    # a sample's win rate is None exactly when none of its pairs was decided: with no consistent pair, all are
    if counts["judge/consistent_pairs"] == 0:
        assert report.scores == [None] * 6 and report.missing == 6
    # the counts reach the iteration's metrics record
    completions = [Completion([1], [5, 2], [0.0, 0.0], "stop", t) for t in texts]
    scores = torch.tensor([float("nan") if s is None else s for s in report.scores]).view(2, 3)
    record = rollout_metrics(ScoredGroups(problems, completions, scores, report, 0, 0.1), "grpo", 0)
    assert record["judge/judge_calls"] == 12 and record["judge/pairs"] == 6


def test_judge_eval_writes_accuracy_consistency_and_subsets(tmp_path: Path, format_judge: Path, pairs: Path) -> None:
    out = tmp_path / "e"
    rc = main(["judge", "eval", f"model.path={format_judge}", f"data.path={pairs}", f"output_dir={out}",
               "data.judge.template=short", "eval.sampling.temperature=0", "eval.sampling.max_new_tokens=8"])  # fmt: skip
    assert rc == 0
    m = json.loads((out / "judge_eval.json").read_text())["model"]
    assert m["pairs"] == 2 and set(m["subsets"]) == {"add", "sub"}
    assert m["accuracy"]["n"] == 2 and m["parse_failure_rate"]["n"] == 4
    # right in both orders implies right in each order
    assert m["accuracy"]["k"] <= min(m["accuracy_ab"]["k"], m["accuracy_ba"]["k"])
    assert m["accuracy"]["lo"] <= m["accuracy"]["value"] <= m["accuracy"]["hi"]
    assert sum(s["pairs"] for s in m["subsets"].values()) == 2


def test_judge_eval_of_a_missing_model_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["judge", "eval", f"model.path={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("posttrain: error:")


def test_posttrain_judge_runs_warm_up_training_and_both_evaluations(tmp_path: Path, tiny_dir: Path) -> None:
    out = tmp_path / "j"
    rc = main(["judge", "--config", "judge-arithmetic", f"model.path={tiny_dir}", f"output_dir={out}",
               "data.arithmetic.num_operands=2", "data.num_train=32", "eval.num_problems=6",
               "stages.sft.train.max_steps=4", "stages.sft.train.batch_size=16", "stages.sft.train.micro_batch_size=16",
               "stages.grpo.train.max_steps=2", "stages.grpo.rollout.prompts_per_step=4",
               "stages.grpo.rollout.samples_per_prompt=4", "grpo.drop_uniform_groups=false"])  # fmt: skip
    assert rc == 0
    results = json.loads((out / "judge_eval.json").read_text())
    assert set(results) == {"before", "after"} and results["before"]["pairs"] == 6
    assert (out / "sft" / "final" / "config.json").is_file() and (out / "grpo" / "final" / "config.json").is_file()
    assert len(read_metrics(out / "grpo" / "metrics.jsonl")) == 2


def test_sampled_pairs_are_a_correct_and_an_incorrect_sample_of_one_problem(tmp_path: Path, tiny_dir: Path) -> None:
    from posttrain.recipes.judge import sample_pairs

    # the untrained model's random digits are right by the last-number rule about one time in ten
    cfg = load_config(None, ["data.task=judge", "data.judge.source=sampled", f"data.judge.sample_from={tiny_dir}",
                             "data.judge.problems=8", "data.judge.samples_per_problem=16", "eval.num_problems=8",
                             "data.arithmetic.digits=1", "data.arithmetic.num_operands=2", "sampling.max_new_tokens=8",
                             f"model.path={tiny_dir}"])  # fmt: skip
    out = sample_pairs(cfg, tmp_path)
    assert out.data.judge.source == "preferences" and out.data.path == str(tmp_path / "sampled_train.jsonl")
    task = ArithmeticTask(cfg.data.arithmetic)
    problems = {ex.prompt: ex for ex in task.examples("train", 8, cfg.seed)}
    rows = [json.loads(line) for line in (tmp_path / "sampled_train.jsonl").read_text().splitlines()]
    assert rows
    for row in rows:
        ex = problems[row["prompt"]]
        assert task.verify(ex, row["chosen"]) == 1.0 and task.verify(ex, row["rejected"]) == 0.0
    judge = make_task(out.data)
    assert len(judge.examples("train", None, 0)) == 2 * len(rows)  # both orders of every pair


def test_one_self_taught_iteration_fine_tunes_on_the_judgments_that_pick_the_winner(
    tmp_path: Path, format_judge: Path
) -> None:
    from posttrain.recipes.judge import run_self_taught

    cfg = load_config(None, [*SHORT, f"model.path={format_judge}", f"output_dir={tmp_path / 's'}",
                             "data.arithmetic.digits=1", "data.arithmetic.num_operands=2",
                             "data.judge.ste_iterations=1", "data.judge.ste_instructions=8", "data.judge.ste_judgments=4",
                             "sampling.max_new_tokens=8", "eval.num_problems=6", "eval.sampling.temperature=0",
                             "eval.sampling.max_new_tokens=8", "train.max_steps=3", "train.batch_size=4",
                             "train.micro_batch_size=4"])  # fmt: skip
    results = run_self_taught(cfg)
    rows = [json.loads(x) for x in (tmp_path / "s" / "iter_1" / "judgments.jsonl").read_text().splitlines()]
    (it,) = results["iterations"]
    assert it["pairs"] == 8 and it["prompts"] == 16 and it["kept"] == len(rows) > 0
    for row in rows:  # every kept judgment picked the good response: the worked solution of the problem itself
        a, b = row["prompt"].split("\nA:\n")[1].removesuffix("\nbetter:").split("\nB:\n")
        question = row["prompt"].split("\n")[0].removesuffix("=?")
        right = "A" if a == worked_solution(question) else "B"
        assert worked_solution(question) in (a, b) and a != b and parse_pairwise(row["completion"]) == right
    assert results["start"]["pairs"] == 6 and it["eval"]["pairs"] == 6
    assert (tmp_path / "s" / "iter_1" / "sft" / "final" / "config.json").is_file()


def test_grpo_with_a_pairwise_judge_logs_its_counts(tmp_path: Path, tiny_dir: Path, format_judge: Path) -> None:
    from posttrain.recipes.grpo import train_grpo

    judge = f"{{kind: judge, path: {format_judge}, mode: pairwise, template: short, max_new_tokens: 8}}"
    cfg = load_config(None, [f"model.path={tiny_dir}", f"output_dir={tmp_path / 'g'}", f"reward.components=[{judge}]",
                             "data.arithmetic.digits=1", "data.arithmetic.num_operands=2", "train.max_steps=2",
                             "rollout.prompts_per_step=2", "rollout.samples_per_prompt=3", "sampling.max_new_tokens=8",
                             "grpo.drop_uniform_groups=false"])  # fmt: skip
    from posttrain.errors import TrainingError

    try:
        train_grpo(cfg)
    except TrainingError as e:  # every group may lack a decided pair: then nothing is learned, and it says so
        assert "not one optimiser update" in str(e)
    records = read_metrics(tmp_path / "g" / "metrics.jsonl")
    assert len(records) == 2
    for r in records:  # 2 prompts x 3 pairs x 2 orders per iteration
        assert r["judge/judge_calls"] == 12 and r["judge/pairs"] + r["judge/parse_failures"] / 2 <= 6
        assert r["judge/tokens"] > 0 and r["judge/consistent_pairs"] <= r["judge/pairs"]
        assert r["unscored"] == r["reward_missing"]  # a sample without a decided pair: missing, never 0
