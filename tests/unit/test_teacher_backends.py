"""``teacher.backend``: what each backend refuses, and how vLLM's per-sequence logprobs land in a batch's columns.

The Ray teacher's numbers are tested against the local ones in
tests/integration/test_teacher_ray.py, the vLLM teacher's on a GPU in
tests/integration/test_vllm_teacher.py; here is what runs anywhere.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from posttrain.algorithms.logprobs import token_logprobs
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.data.batch import collate, pack
from posttrain.errors import ConfigError
from posttrain.models.io import load_model
from posttrain.train.teacher import LocalTeacher, check_teacher
from posttrain.train.vllm_teacher import place, sequences
from tests.conftest import FAST

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
COMPLETIONS = [[20, 21], [22, 23, 24, 25], [26]]


def test_sequences_are_the_rows_or_the_packed_segments() -> None:
    batch = collate(PROMPTS, COMPLETIONS, 0)
    assert sequences(batch) == [(0, 0, 5), (1, 0, 6), (2, 0, 5)]
    packed = pack(batch, capacity=11)  # first-fit decreasing: the 6-token row, then a 5 beside it; the other 5 alone
    assert sequences(packed) == [(0, 0, 6), (0, 6, 5), (1, 0, 5)]


def test_per_sequence_logprobs_placed_in_a_packed_batch_are_the_packed_forward_passes(tiny_dir: Path) -> None:
    """What vLLM returns, one list per sequence scored alone, lands where the trainer's logprobs are."""
    model = load_model(tiny_dir, device="cpu")
    batch = collate(PROMPTS, COMPLETIONS, 0)
    for b in (batch, pack(batch, capacity=11)):
        seqs = sequences(b)
        alone = [
            token_logprobs(model, collate([b.input_ids[r, s : s + n].tolist()], [[]], 0))[0][0].tolist()
            for r, s, n in seqs
        ]
        with torch.no_grad():
            together = LocalTeacher(model).logprobs(b, 1.0)
        placed = place(b, seqs, alone)
        mask = b.response_mask.bool()
        assert mask.sum() == sum(len(c) for c in COMPLETIONS)
        torch.testing.assert_close(placed[mask], together[mask], atol=1e-5, rtol=0)
        assert placed[~b.attention_mask[:, 1:].bool()].abs().sum() == 0  # padding: 0, read by no loss


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["teacher.backend=vllm"], "distill.loss=reverse_kl reads the teacher's whole distribution"),
        (["teacher.backend=vllm", "distill.loss=jsd"], "distill.loss=jsd reads the teacher's whole distribution"),
        (["teacher.backend=vllm", "distill.loss=sampled", "sampling.temperature=0.7"], "temperature 1"),
    ],
)
def test_what_vllm_prompt_logprobs_cannot_serve_is_refused_in_one_line(
    overrides: list[str], needle: str, tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["distill", *FAST, f"model.path={tiny_dir}", f"teacher.path={tiny_dir}", *overrides,
                 f"output_dir={tmp_path / 'o'}", "train.max_steps=1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert needle in err[0] and "teacher.backend" in err[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal of a machine without a CUDA GPU")
def test_a_vllm_teacher_without_a_gpu_is_refused_in_one_line(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for command, extra in (("distill", ["distill.loss=sampled"]), ("grpo", ["grpo.kd_coef=0.1"])):
        code = main([command, *FAST, f"model.path={tiny_dir}", f"teacher.path={tiny_dir}", "teacher.backend=vllm",
                     *extra, f"output_dir={tmp_path / command}", "train.max_steps=1"])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert "teacher.backend=vllm needs a CUDA GPU" in err[0]


def test_a_remote_teacher_under_torchrun_is_refused_and_the_local_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_teacher(load_config(None, ["teacher.backend=local"]), full_distribution=True)
    for backend in ("ray", "vllm"):
        with pytest.raises(ConfigError, match="under torchrun use teacher.backend=local") as e:
            check_teacher(load_config(None, [f"teacher.backend={backend}"]), full_distribution=False)
        assert e.value.field == "teacher.backend"
