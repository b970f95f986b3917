"""Packed training: several sequences per row must score every token exactly as unpacked rows do."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.grpo import LOSS_WEIGHTS, grpo_loss
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.sft import sft_loss
from posttrain.data.batch import collate, pack
from posttrain.models.io import load_model


def _rows(seed: int = 0, n: int = 7) -> tuple[list[list[int]], list[list[int]]]:
    gen = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for _ in range(n):
        p, c = (int(x) for x in torch.randint(2, 12, (2,), generator=gen))
        prompts.append(torch.randint(3, 60, (p,), generator=gen).tolist())
        completions.append(torch.randint(3, 60, (c,), generator=gen).tolist())
    return prompts, completions


def test_pack_lays_rows_end_to_end_and_keeps_every_token() -> None:
    prompts, completions = _rows()
    batch = collate(prompts, completions, pad_id=0)
    packed = pack(batch, capacity=48)
    assert packed.input_ids.shape[0] < batch.input_ids.shape[0]  # fewer rows: that is the point
    assert packed.input_ids.shape[1] <= 48
    assert pack(batch).input_ids.shape[1] == batch.input_ids.shape[1]  # default capacity: the longest row
    assert packed.num_tokens == batch.num_tokens
    assert float(packed.response_mask.sum()) == float(batch.response_mask.sum())
    assert packed.position_ids is not None
    # each packed row: segments whose positions count 0, 1, 2, ... and whose tokens are one original row
    originals = {tuple(p + c) for p, c in zip(prompts, completions)}
    found = []
    for row, pos in zip(packed.input_ids.tolist(), packed.position_ids.tolist()):
        starts = [t for t, q in enumerate(pos) if q == 0] + [len(pos)]
        found += [tuple(row[a:b]) for a, b in zip(starts, starts[1:])]
    assert originals <= set(found)


def test_packed_sft_loss_and_gradient_equal_unpacked(tiny_dir) -> None:
    model = load_model(tiny_dir, "float32", "cpu")
    prompts, completions = _rows(seed=1, n=9)
    batch = collate(prompts, completions, pad_id=0)

    def loss_and_grad(b):
        model.zero_grad()
        lp, _ = token_logprobs(model, b)
        loss = sft_loss(lp, b.response_mask).loss_sum
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters()])

    loss, grad = loss_and_grad(batch)
    packed_loss, packed_grad = loss_and_grad(pack(batch, capacity=40))
    assert abs(loss - packed_loss) < 1e-4 * abs(loss)
    torch.testing.assert_close(packed_grad, grad, rtol=1e-4, atol=1e-6)


def test_packed_grpo_loss_equals_unpacked(tiny_dir) -> None:
    model = load_model(tiny_dir, "float32", "cpu")
    prompts, completions = _rows(seed=2, n=8)
    batch = collate(prompts, completions, pad_id=0)
    gen = torch.Generator().manual_seed(0)
    width = batch.response_mask.shape[1]
    with torch.no_grad():
        old, _ = token_logprobs(model, batch)
    weights, _ = LOSS_WEIGHTS["seq_mean"](batch.response_mask, 16)
    batch.extra = {
        "old_logprobs": (old + 0.05 * torch.randn(old.shape, generator=gen)) * batch.response_mask,
        "advantages": torch.randn(len(prompts), 1, generator=gen).expand(-1, width).contiguous(),
        "weights": weights,
        "group": torch.arange(len(prompts)) // 4,  # per-row: dropped by pack, unused by the loss
    }

    def loss(b):
        lp, ent = token_logprobs(model, b, with_entropy=True)
        x = b.extra
        return grpo_loss(lp, x["old_logprobs"], x["advantages"], b.response_mask, x["weights"], 0.2, 0.28, entropy=ent)

    plain, packed = loss(batch), loss(pack(batch))
    torch.testing.assert_close(packed.loss_sum, plain.loss_sum, rtol=1e-4, atol=1e-6)
    for key in ("ratio", "clip_frac", "entropy"):
        (a, n), (b, m) = plain.metrics[key], packed.metrics[key]
        assert abs(a / n - b / m) < 1e-4 and n == m


def _cfg(tmp_path, tiny_dir, name, *extra):
    from posttrain.config import load_config
    from tests.conftest import FAST

    return load_config(None, [*FAST, f"output_dir={tmp_path / name}", f"model.path={tiny_dir}", *extra])


def test_sft_with_packing_takes_the_same_steps(tmp_path, tiny_dir) -> None:
    from posttrain.recipes.sft import train_sft
    from posttrain.train.metrics import read_metrics

    runs = {}
    for packing in ("false", "true"):
        train_sft(_cfg(tmp_path, tiny_dir, packing, "train.max_steps=4", "optim.lr=3e-3", f"train.packing={packing}"))
        runs[packing] = read_metrics(tmp_path / packing / "metrics.jsonl")
    plain, packed = ([r["loss"] for r in runs[k]] for k in ("false", "true"))
    assert packed == pytest.approx(plain, rel=1e-4)  # four updates later: the same model
    assert sum(r["tokens"] for r in runs["true"]) == sum(r["tokens"] for r in runs["false"])


def test_grpo_with_packing_gives_the_same_first_update(tmp_path, tiny_dir) -> None:
    from posttrain.recipes.grpo import train_grpo
    from posttrain.train.metrics import read_metrics

    # the untrained model never answers right; shorter-is-better gives every group a signal
    reward = "reward.components=[{kind: python, function: tests.rewards:shorter_is_better}]"

    first = {}
    for packing in ("false", "true"):
        extra = (
            "train.max_steps=1",
            "rollout.samples_per_prompt=8",
            "sampling.temperature=1.5",
            f"train.packing={packing}",
            reward,
        )
        train_grpo(_cfg(tmp_path, tiny_dir, packing, *extra))
        first[packing] = read_metrics(tmp_path / packing / "metrics.jsonl")[0]
    assert first["false"].get("loss") is not None  # a real update happened: some group had signal
    assert first["false"]["reward/shorter_is_better"] == first["false"]["reward"]  # the python reward scored
    for key in ("loss", "grad_norm", "ratio", "entropy"):
        assert first["true"][key] == pytest.approx(first["false"][key], rel=1e-4, abs=1e-6), key
