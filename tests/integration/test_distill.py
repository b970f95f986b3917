"""Real steps of on-policy distillation, KDRL and CHORD / LUFFY / Prefix-RFT on tiny models, and the refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from posttrain.algorithms.distill import reverse_kl
from posttrain.cli import main
from posttrain.config import TinyModelConfig, load_config
from posttrain.data.batch import collate
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.tiny import build_tiny
from posttrain.recipes.distill import PrefixEngine, train_distill
from posttrain.recipes.grpo import train_grpo
from posttrain.records import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.train.metrics import read_metrics
from tests.conftest import FAST

SMALL = ["model.tiny.num_layers=1", "optim.lr=1e-2", "train.micro_batch_size=16", "grpo.drop_uniform_groups=false"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger tiny model with the student's tokenizer: a teacher that differs from the student."""
    cfg = TinyModelConfig(hidden_size=48, num_layers=2, num_heads=2, intermediate_size=96, max_position_embeddings=64)
    return build_tiny(cfg, tmp_path_factory.mktemp("teacher"), seed=7)


def kl_to_teacher(student_dir: Path, teacher_dir: Path, samples_from: Path) -> float:
    """Mean reverse KL over the tokens of fixed samples (drawn from ``samples_from``): what distillation shrinks."""
    student, teacher = load_model(student_dir, device="cpu"), load_model(teacher_dir, device="cpu")
    tokenizer = load_tokenizer(samples_from)
    prompts = [list(tokenizer(f"{a}+{b}=?\n")["input_ids"]) for a in range(4) for b in range(4)]
    drawn = TorchEngine(load_model(samples_from, device="cpu"), tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=16, seed=0)
    )
    batch = collate([c.prompt_ids for c in drawn], [c.completion_ids for c in drawn], 0)
    with torch.no_grad():
        s = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
        t = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, :-1]
    return float((reverse_kl(s, t) * batch.response_mask).sum() / batch.response_mask.sum())


def test_distill_steps_shrink_the_reverse_kl_and_gkd_lambda_lets_the_teacher_sample(
    tmp_path: Path, tiny_dir: Path, teacher_dir: Path
) -> None:
    out = tmp_path / "d"
    cfg = load_config(None, [*FAST, *SMALL, f"model.path={tiny_dir}", f"teacher.path={teacher_dir}",
                             f"output_dir={out}", "train.max_steps=12", "distill.on_policy_frac=0.5"])  # fmt: skip
    final = train_distill(cfg)
    records = [r for r in read_metrics(out / "metrics.jsonl") if r.get("stage") == "distill"]
    assert [r["iteration"] for r in records] == list(range(1, 13))
    assert {r["sampled_by"] for r in records} == {"student", "teacher"}  # lambda = 0.5 over 12 seeded draws
    assert all(r["loss"] == pytest.approx(r["distill"]) and r["distill"] > 0 for r in records)
    assert "reward" in records[0]  # logged, not trained on
    # 12 steps: 0.57-0.62 of the starting KL over seeds 0-2 (4 steps: 0.89-1.07, too few to tell from noise)
    assert kl_to_teacher(final, teacher_dir, tiny_dir) < 0.8 * kl_to_teacher(tiny_dir, teacher_dir, tiny_dir)


def test_kdrl_pulls_grpo_towards_the_teacher(tmp_path: Path, tiny_dir: Path, teacher_dir: Path) -> None:
    """GRPO with the KD term: the student's distributions on its own samples move towards the teacher's.

    The untrained student's rewards are all 0 here, so the KD term is the whole gradient; truncated
    samples are kept (grpo.overlong=none) or nearly every token would be masked. The
    sampled tokens' k2 is a noisy estimate: a small learning rate over a few steps.
    """
    cfg = load_config(None, [*FAST, *SMALL, f"model.path={tiny_dir}", f"teacher.path={teacher_dir}",
                             "train.max_steps=4", "rollout.prompts_per_step=8", f"output_dir={tmp_path / 'k'}",
                             "grpo.kd_coef=1.0", "optim.lr=2e-3", "grpo.overlong=none"])  # fmt: skip
    kdrl = train_grpo(cfg)
    records = read_metrics(tmp_path / "k" / "metrics.jsonl")
    assert [r["kd_coef"] for r in records] == [1.0] * 4 and all(r["kd"] > 0 for r in records)
    assert kl_to_teacher(kdrl, teacher_dir, tiny_dir) < kl_to_teacher(tiny_dir, teacher_dir, tiny_dir)


def test_chord_luffy_and_prefix_rft_train_on_the_demonstrations(
    tmp_path: Path, tiny_dir: Path, teacher_dir: Path
) -> None:
    out = tmp_path / "c"
    cfg = load_config(None, [*FAST, *SMALL, f"model.path={tiny_dir}", f"output_dir={out}", "train.max_steps=3",
                             "grpo.sft_coef=0.5", "grpo.sft_coef_end=0.1", "grpo.sft_schedule=linear",
                             "grpo.sft_phi=false", "grpo.luffy=true", "grpo.prefix_samples=1",
                             "grpo.kd_coef=0.5", "grpo.kd_mask=incorrect", f"teacher.path={teacher_dir}"])  # fmt: skip
    train_grpo(cfg)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["sft_coef"] for r in records] == pytest.approx([0.5, 0.3, 0.1])
    assert [r["kd_coef"] for r in records] == [0.5] * 3
    nll = [r["sft_nll"] for r in records]
    assert nll[-1] < nll[0]  # the SFT term teaches the demonstrations
    assert all(r["off_policy_prob"] > 0 for r in records)  # LUFFY's and the prefixes' expert tokens trained
    assert all(r["kd"] >= 0 for r in records)  # KD on incorrect samples only: the untrained model's are all wrong


def test_prefix_rft_alone_trains_prefix_tokens_as_off_policy(tmp_path: Path, tiny_dir: Path) -> None:
    """Without LUFFY, off-policy tokens exist only if the loop's prompts were found and prefixed.

    Truncated samples are kept (``grpo.overlong=none``): masked, a prefixed sample that ran to the
    token limit would take its off-policy tokens out of the update on some draws."""
    out = tmp_path / "p"
    cfg = load_config(None, [*FAST, *SMALL, f"model.path={tiny_dir}", f"output_dir={out}", "train.max_steps=2",
                             "grpo.prefix_samples=2", "grpo.prefix_ratio=0.5", "grpo.overlong=none"])  # fmt: skip
    train_grpo(cfg)
    records = read_metrics(out / "metrics.jsonl")
    assert all(0 < r["off_policy_prob"] < 1 for r in records)


def test_a_teacher_with_another_tokenizer_is_refused_in_one_line(
    tmp_path: Path, tiny_dir: Path, teacher_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other"
    shutil.copytree(teacher_dir, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[10:12]  # same names, same size: two ids swapped
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    code = main(["distill", *FAST, f"model.path={tiny_dir}", f"teacher.path={other}", f"output_dir={tmp_path / 'o'}",
                 "train.max_steps=1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "teacher.path" in err[0] and "tokenizer is not the student's" in err[0] and repr(a) in err[0]


def test_distill_without_a_teacher_and_a_teacher_sampling_on_ray_are_refused(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["distill", *FAST, f"model.path={tiny_dir}", f"output_dir={tmp_path / 'a'}"]) == 2
    assert "teacher.path" in capsys.readouterr().err
    code = main(["distill", *FAST, f"model.path={tiny_dir}", f"teacher.path={tiny_dir}", "engine.backend=ray",
                 "distill.on_policy_frac=0.5", f"output_dir={tmp_path / 'b'}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "not supported yet" in err[0] and "engine.backend" in err[0]


def test_prefix_rft_rollouts_continue_the_demonstration_prefix(tiny_dir: Path) -> None:
    tokenizer = load_tokenizer(tiny_dir)
    inner = TorchEngine(load_model(tiny_dir, device="cpu"), tokenizer)
    prompt = list(tokenizer("1+2=?\n")["input_ids"])
    prefix = list(tokenizer("1+2=3", add_special_tokens=False)["input_ids"])
    engine = PrefixEngine(inner, tokenizer, {tuple(prompt): prefix}, per_group=1, group_size=3)
    out = engine.generate([prompt] * 3, SamplingParams(max_new_tokens=12, seed=0))
    assert engine.prefix_lens == [0, 0, len(prefix)]  # the last sample of the group starts from the prefix
    assert all(c.prompt_ids == prompt for c in out)
    last = out[2]
    assert last.completion_ids[: len(prefix)] == prefix and last.logprobs[: len(prefix)] == [0.0] * len(prefix)
    assert len(last.completion_ids) <= 12 and last.text.startswith("1+2=3")
    assert all(lp < 0 for lp in out[0].logprobs)  # the others are the policy's own samples
