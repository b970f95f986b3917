"""Online DPO with a pairwise judge as the reward: its pairs follow the judge's verdicts, and it trains.

The judge is the tiny model fine-tuned on the right verdicts of two arithmetic problems (both orders), so
on those problems' answers its verdicts are known; online DPO's ``best_worst`` rule over the judge's
win rates then picks the judged winner as chosen and the loser as rejected.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.judges.parse import question_text
from posttrain.recipes.online_dpo import scored_pairs, train_online_dpo
from posttrain.recipes.sft import train_sft
from posttrain.rewards.registry import build_reward
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST

ARITH = ["data.arithmetic.digits=1", "data.arithmetic.num_operands=2"]
JUDGE = "{kind: judge, path: %s, mode: pairwise, template: short, max_new_tokens: 8, temperature: %s}"


def problems(n: int):
    task = ArithmeticTask(load_config(None, ARITH).data.arithmetic)
    return task, task.examples("train", n, 0)


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """The tiny model after SFT on the right verdicts (both orders) of the first two arithmetic problems."""
    torch.set_num_threads(1)  # module fixtures run before the per-test thread setting
    root = tmp_path_factory.mktemp("judge_dpo")
    task, exs = problems(2)
    rows = [{"prompt": question_text(task.prompt(ex)), "chosen": f"#{ex.answer}",
             "rejected": f"#{int(ex.answer) + 1}"} for ex in exs]  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["data.task=judge", "data.judge.template=short", "data.judge.source=preferences",
                             f"data.path={root / 'pairs.jsonl'}", "data.judge.demo=correct", f"model.path={tiny_dir}",
                             f"output_dir={root / 'sft'}", "train.max_steps=150", "train.batch_size=4",
                             "train.micro_batch_size=4", "optim.lr=1e-2"])  # fmt: skip
    return train_sft(cfg)


def test_best_worst_pairs_follow_the_judges_verdicts(judge_dir: Path) -> None:
    """G = 2: a decided pair gives win rates 1 and 0, so the pair is exactly the judge's verdict."""
    task, exs = problems(2)
    examples = [ex for ex in exs for _ in range(2)]
    right = [f"#{ex.answer}" for ex in exs]
    wrong = [f"#{int(ex.answer) + 1}" for ex in exs]
    texts = [wrong[0], right[0], right[1], wrong[1]]  # the right answer second, then first
    scorer = build_reward(load_config(None, [f"reward.components=[{JUDGE % (judge_dir, 0.0)}]"]).reward, task)
    report = scorer.score(examples, texts, groups=None)
    assert report.counts["judge/judge_calls"] == 4 and report.counts["judge/consistent_pairs"] == 2
    assert report.scores == [0.0, 1.0, 1.0, 0.0]  # the judge picks the right answer in both orders
    pairs, skipped = scored_pairs("best_worst", report.scores, 2, random.Random(0))
    assert pairs == [(1, 0, 1.0), (2, 3, 1.0)] and skipped["unscored"] == 0
    # an undecided pair (the same answer twice: [[A]] in both orders disagrees) is no pair, counted as unscored
    tie = scorer.score(examples[:2], [right[0], right[0]], groups=None)
    assert tie.scores == [None, None] and tie.counts["judge/consistent_pairs"] == 0
    assert scored_pairs("best_worst", tie.scores, 2, random.Random(0)) == (
        [],
        {"tie": 0, "all_correct": 0, "all_wrong": 0, "unscored": 1},
    )


def test_online_dpo_trains_on_pairs_from_a_sampling_judge(tmp_path: Path, tiny_dir: Path, judge_dir: Path) -> None:
    out = tmp_path / "d"
    cfg = load_config(None, [*FAST, *ARITH, f"model.path={tiny_dir}", f"output_dir={out}", "dpo.mode=online",
                             "dpo.pairs=best_worst", "train.max_steps=8", "rollout.prompts_per_step=2",
                             "rollout.samples_per_prompt=4", "sampling.max_new_tokens=8", "optim.lr=1e-2",
                             f"reward.components=[{JUDGE % (judge_dir, 1.0)}]"])  # fmt: skip
    train_online_dpo(cfg)
    records = read_metrics(out / "metrics.jsonl")
    # 8 steps: which samples the tiny judge decides varies with the CPU's last bits, and one step
    # with a decided pair is not enough to see the policy move off the reference
    assert len(records) == 8
    for r in records:  # 2 prompts x C(4,2) pairs x 2 orders per step; each prompt pairs once or is skipped
        assert r["judge/judge_calls"] == 24 and r["pairs"] + r["skipped_unscored"] + r["skipped_tie"] == 2
    trained = [r for r in records if r["pairs"] > 0]  # a prompt with no decided pair is skipped, no update
    assert len(trained) >= 2, records
    assert trained[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-5)  # policy = reference at the first update
    assert abs(trained[1]["loss"] - math.log(2.0)) > 1e-3  # after it, the policy has moved off the reference


def test_a_judge_on_a_vllm_policy_without_a_gpu_is_refused_in_one_line(
    tmp_path: Path, judge_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: vLLM may run here")
    rc = main(["dpo", "dpo.mode=online", "engine.backend=vllm", f"output_dir={tmp_path / 'v'}", *FAST,
               f"reward.components=[{JUDGE % (judge_dir, 0.0)}]"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "engine.backend" in err[0] and "CUDA GPU" in err[0], err
