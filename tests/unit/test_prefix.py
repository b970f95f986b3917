"""Prefix-shared rows (posttrain.data.prefix): the layout by hand, and the same sums as padded rows."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.logprobs import response_sums
from posttrain.data.batch import collate
from posttrain.data.prefix import share, shared_rows
from posttrain.models.io import load_model


def test_two_responses_share_the_prompt_and_their_common_start() -> None:
    rows = shared_rows([([1, 2], [3, 4, 5]), ([1, 2], [3, 4, 6, 7]), ([8], [9])])
    # one row: [1 2 3 4 | 5 | 6 7] then [8 9] (first-fit: the 2-token group fits after the 7-token one? no: width 7)
    assert rows.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7], [8, 9, 0, 0, 0, 0, 0]]
    assert rows.position_ids.tolist() == [[0, 1, 2, 3, 4, 4, 5], [0, 1, 0, 1, 2, 3, 4]]
    reads = list(zip(rows.rows.tolist(), rows.cols.tolist(), rows.targets.tolist(), rows.sequence.tolist()))
    assert reads == [
        (0, 1, 3, 0), (0, 2, 4, 0), (0, 3, 5, 0),  # sequence 0: its response 3 4 5, each from the column before
        (0, 1, 3, 1), (0, 2, 4, 1), (0, 3, 6, 1), (0, 5, 7, 1),  # sequence 1: 6 from the shared 4, 7 from 6
        (1, 0, 9, 2),
    ]  # fmt: skip
    m = rows.attention_mask[0, 0]
    assert m[5].tolist() == [True, True, True, True, False, True, False]  # 6 sees the prefix and itself, not 5
    assert m[6].tolist() == [True, True, True, True, False, True, True]
    assert m[4].tolist() == [True, True, True, True, True, False, False]
    assert not m[3, 4] and m[1, 0] and not m[0, 1]  # causal inside the prefix
    tail = rows.attention_mask[1, 0]
    assert tail[:2, :2].tolist() == [[True, False], [True, True]] and not tail[:2, 2:].any()
    assert tail[4].tolist() == [False, False, False, False, True, False, False]  # the tail: itself only


def _groups(seed: int) -> list[tuple[list[int], list[int]]]:
    """Prompts with 1-3 responses each; responses of one prompt often begin alike."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for g in range(5):
        prompt = torch.randint(3, 60, (int(torch.randint(1, 9, (1,), generator=gen)),), generator=gen).tolist()
        stem = torch.randint(3, 60, (int(torch.randint(0, 6, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(1 + g % 3):
            tail = torch.randint(3, 60, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen).tolist()
            out.append((prompt, stem + tail))
    out.append((out[0][0], list(out[0][1])))  # a duplicate: still its own sequence, its sums the same
    return out


@pytest.mark.parametrize("chunk", [0, 4])
def test_shared_rows_give_the_padded_sums_and_gradients(tiny_dir, chunk) -> None:
    model = load_model(tiny_dir, "float32", "cpu")
    sequences = _groups(seed=1)
    n = len(sequences)
    weights = torch.randn(n, generator=torch.Generator().manual_seed(2))

    def run(shared: bool):
        model.zero_grad()
        batch = collate([p for p, _ in sequences], [c for _, c in sequences], 0)
        batch = share(batch) if shared else batch
        sums, lengths = response_sums(model, batch, n, chunk)
        (sums * weights).sum().backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return batch, sums.detach(), lengths, grad

    padded, sums, lengths, grad = run(False)
    shared, shared_sums, shared_lengths, shared_grad = run(True)
    assert shared.shared is not None and shared.shared.input_ids.numel() < padded.input_ids.numel()  # fewer positions
    assert lengths.tolist() == [len(c) for _, c in sequences] == shared_lengths.tolist()
    torch.testing.assert_close(shared_sums, sums, rtol=1e-5, atol=1e-5)
    assert shared_sums[0] == pytest.approx(float(shared_sums[-1]), abs=1e-5)  # the duplicate
    torch.testing.assert_close(shared_grad, grad, rtol=1e-4, atol=1e-6)


def test_online_dpo_with_packing_takes_the_same_first_steps(tmp_path, tiny_dir) -> None:
    from posttrain.config import load_config
    from posttrain.recipes.dpo import train_dpo
    from posttrain.train.metrics import read_metrics
    from tests.conftest import FAST

    runs = {}
    for packing in ("false", "true"):
        cfg = load_config(None, [
            *FAST, f"output_dir={tmp_path / packing}", f"model.path={tiny_dir}", "dpo.mode=online",
            "train.max_steps=2", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "optim.lr=3e-3",
            "sampling.max_new_tokens=12", f"train.packing={packing}", "dpo.pairs=best_worst",
            "reward.components=[{kind: python, function: tests.rewards:shorter_is_better}]",  # a preference always
        ])  # fmt: skip
        train_dpo(cfg)
        runs[packing] = [r for r in read_metrics(tmp_path / packing / "metrics.jsonl") if "loss" in r]
    plain, packed = runs["false"], runs["true"]
    assert len(plain) == 2 and plain[0].get("loss") is not None
    for key in ("loss", "reward_margin", "chosen_logps"):
        got = [r.get(key) for r in packed]
        assert got == pytest.approx([r.get(key) for r in plain], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("micro", [4, 16])
def test_grpo_reference_pass_shares_the_prompt_with_packing(tiny_dir, micro) -> None:
    from types import SimpleNamespace

    from posttrain.config import load_config
    from posttrain.recipes.grpo import rowwise_logprobs

    model = load_model(tiny_dir, "float32", "cpu")
    sequences = _groups(seed=3)
    batch = collate([p for p, _ in sequences], [c for _, c in sequences], 0)
    got = {}
    for packing in ("false", "true"):
        cfg = load_config(None, [f"train.packing={packing}", f"train.micro_batch_size={micro}", "train.logits_chunk=4"])
        got[packing] = rowwise_logprobs(SimpleNamespace(cfg=cfg, model=model), model, batch)
    assert got["true"].shape == got["false"].shape == batch.response_mask.shape
    mask = batch.response_mask.bool()
    torch.testing.assert_close(got["true"][mask], got["false"][mask], rtol=1e-5, atol=1e-5)
    assert got["true"][~mask].abs().max() == 0  # prompt and padding positions stay 0, as padded
