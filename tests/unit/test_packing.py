"""Packed training: several sequences per row must score every token exactly as unpacked rows do."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.grpo import LOSS_WEIGHTS, grpo_loss
from posttrain.algorithms.logprobs import token_logprobs
from posttrain.algorithms.sft import sft_loss
from posttrain.data.batch import ROW, collate, pack, pack_rows, row_sums
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


def test_pack_rows_sums_each_sequence_back_in_its_row() -> None:
    # 4, 2 and 2 tokens: the two short ones share a row of the longest one's width
    batch = collate([[5, 6], [7], [4]], [[10, 11], [12], [13]], pad_id=0)
    packed = pack_rows(batch)
    assert packed.input_ids.tolist() == [[5, 6, 10, 11], [7, 12, 4, 13]]
    assert packed.extra[ROW].tolist() == [[0, 0, 0], [1, 0, 2]]  # the middle 0 is masked: it predicts row 2's start
    assert ROW not in batch.extra
    for b in (batch, packed):
        predicted = b.input_ids[:, 1:].float()  # a per-token value that does not depend on the layout
        assert row_sums(predicted, b, 3).tolist() == [21.0, 12.0, 13.0]  # 10 + 11, 12, 13
        assert row_sums(torch.ones_like(predicted), b, 3).tolist() == [2.0, 1.0, 1.0]


def test_packed_and_prefix_shared_dpo_loss_gradient_and_reference_equal_padded(tiny_dir) -> None:
    from posttrain.config import DPOConfig
    from posttrain.data.pairs import collate_pairs
    from posttrain.recipes.pairwise import dpo_loss_fn
    from posttrain.train.reference import sequence_logps

    model = load_model(tiny_dir, "float32", "cpu")
    prompts, completions = _rows(seed=3, n=10)
    prompts = [prompts[i - i % 2] for i in range(10)]  # sequences 2k and 2k + 1 answer one prompt, as a pair's do
    completions[1] = completions[0][:3] + completions[1]  # and this pair's replies begin alike
    sequences = list(zip(prompts, completions))
    ref = sequence_logps(model, sequences, 0, 4)
    packed_ref = sequence_logps(model, sequences, 0, 4, packing=True)  # prefix-shared rows
    torch.testing.assert_close(packed_ref, ref, rtol=1e-5, atol=1e-5)
    ref = ref + 0.3 * torch.randn(len(ref), generator=torch.Generator().manual_seed(0))  # not the policy: a margin
    pairs = [(0, 1, 1.0), (2, 3, 0.5), (4, 5, 2.0), (6, 7, 1.0), (8, 9, 1.0), (1, 8, 1.0)]

    def loss_and_grad(layout, chunk: int):
        model.zero_grad()
        batch = collate_pairs(sequences, pairs, 0, ref, layout)
        out = dpo_loss_fn(model, DPOConfig(beta=0.1), logits_chunk=chunk)(batch)
        out.loss_sum.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()])
        return batch, float(out.loss_sum.detach()), out.metrics, grad

    for chunk, layout in ((0, "pack"), (8, "pack"), (0, "share"), (8, "share")):  # full and chunked head
        plain, loss, metrics, grad = loss_and_grad("pad", chunk)
        packed, packed_loss, packed_metrics, packed_grad = loss_and_grad(layout, chunk)
        ran = packed.tokens if packed.tokens.shared is None else packed.tokens.shared  # what the forward ran
        assert ran.input_ids.numel() < plain.tokens.input_ids.numel()  # fewer positions computed
        assert packed_loss == pytest.approx(loss, rel=1e-5)
        assert loss != pytest.approx(6 * 0.6931, rel=1e-3)  # the random reference gave the pairs margins
        for key, (num, den) in metrics.items():
            assert packed_metrics[key][0] == pytest.approx(num, rel=1e-4, abs=1e-6), key
            assert packed_metrics[key][1] == den, key
        torch.testing.assert_close(packed_grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("pad_is_eos", [False, True])
def test_packed_reward_model_scores_and_gradient_equal_unpacked(tiny_dir, pad_is_eos) -> None:
    from posttrain.data.pairs import collate_pairs
    from posttrain.models.io import load_tokenizer
    from posttrain.recipes.rm import rm_loss_fn
    from posttrain.rewards.reward_model import load_reward_model, sequence_rewards

    model = load_reward_model(tiny_dir, "float32", load_tokenizer(tiny_dir), "cpu")
    torch.nn.init.normal_(model.score.weight, std=0.5, generator=torch.Generator().manual_seed(1))  # not all 0
    prompts, completions = _rows(seed=5, n=8)
    pad = 2
    if pad_is_eos:  # each reply ends in the pad id: both paths read the token before it
        completions = [c + [pad] for c in completions]
    model.config.pad_token_id = pad
    sequences = list(zip(prompts, completions))
    pairs = [(0, 1, 1.0), (2, 3, 0.5), (4, 5, 2.0), (6, 7, 1.0), (1, 6, 1.0)]

    def run(packing: bool):
        model.zero_grad()
        batch = collate_pairs(sequences, pairs, pad, None, "pack" if packing else "pad")
        rewards = sequence_rewards(model, batch.tokens, batch.num_sequences, pad)
        out = rm_loss_fn(model, pad)(batch)
        out.loss_sum.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return batch, rewards.detach(), float(out.loss_sum.detach()), grad

    plain, rewards, loss, grad = run(False)
    packed, packed_rewards, packed_loss, packed_grad = run(True)
    assert packed.tokens.input_ids.shape[0] < plain.tokens.input_ids.shape[0]  # it did pack
    assert rewards.std() > 0.01  # distinct sequences, distinct scores: a mix-up would show
    torch.testing.assert_close(packed_rewards, rewards, rtol=1e-5, atol=1e-5)
    assert packed_loss == pytest.approx(loss, rel=1e-5)
    torch.testing.assert_close(packed_grad, grad, rtol=1e-4, atol=1e-6)


def test_reward_model_with_packing_takes_the_same_steps(tmp_path, tiny_dir, prefs) -> None:
    from posttrain.recipes.rm import train_rm
    from posttrain.train.metrics import read_metrics

    runs = {}
    for packing in ("false", "true"):
        extra = (f"data.path={prefs}", "train.max_steps=4", "optim.lr=3e-3", f"train.packing={packing}")
        train_rm(_cfg(tmp_path, tiny_dir, f"rm-{packing}", *extra))
        runs[packing] = read_metrics(tmp_path / f"rm-{packing}" / "metrics.jsonl")
    plain, packed = runs["false"], runs["true"]
    assert len({round(r["loss"], 6) for r in plain if "loss" in r}) > 1  # the updates changed the model
    for key in ("loss", "heldout_loss", "heldout_accuracy"):
        got = [r[key] for r in packed if key in r]
        assert got and got == pytest.approx([r[key] for r in plain if key in r], rel=1e-4, abs=1e-6), key


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


def test_offline_dpo_with_packing_takes_the_same_steps(tmp_path, tiny_dir, prefs) -> None:
    from posttrain.recipes.dpo import train_dpo
    from posttrain.train.metrics import read_metrics

    runs = {}
    for packing in ("false", "true"):
        extra = (f"data.path={prefs}", "train.max_steps=4", "optim.lr=3e-3", f"train.packing={packing}")
        train_dpo(_cfg(tmp_path, tiny_dir, packing, *extra))  # each run computes its own reference (own output_dir)
        runs[packing] = read_metrics(tmp_path / packing / "metrics.jsonl")
    plain, packed = runs["false"], runs["true"]
    assert plain[0]["loss"] == pytest.approx(0.6931472, abs=1e-5)  # policy = reference at step 1
    assert plain[3]["loss"] < plain[0]["loss"]  # four updates moved it
    for key in ("loss", "reward_margin", "chosen_logps", "heldout_reward_accuracy"):
        got = [r[key] for r in packed if key in r]
        assert got and got == pytest.approx([r[key] for r in plain if key in r], rel=1e-4, abs=1e-6), key


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
