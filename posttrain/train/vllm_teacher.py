"""The teacher on vLLM (``teacher.backend=vllm``): the sampled tokens' logprobs from vLLM's prompt logprobs.

Each sequence of the batch goes in as a prompt with ``SamplingParams(prompt_logprobs=1,
max_tokens=1)``; vLLM prefills it and returns, at every position after the first, the
logprob of the token that is there (plus the top-1, unused). That is the teacher's
logprob of every sampled token from one prefill, without the trainer holding the teacher.

What it cannot give, and ``posttrain.train.teacher.check_teacher`` refuses in one line:

- the whole distribution (``distill.loss`` reverse_kl and jsd): prompt logprobs are
  top-k lists, not the V logits those losses read;
- a temperature other than 1: vLLM computes prompt logprobs from the raw logits (the
  sampling temperature is not applied to them), and one logprob cannot be rescaled
  without the log-normaliser at the new temperature.

It needs a CUDA GPU and vLLM (``require_vllm``), runs in this process beside the trainer
(and beside a vLLM rollout engine: each takes its ``gpu_memory_utilization`` share), and
also samples when the teacher does (``VLLMEngine.generate``).

A packed batch (``posttrain.data.batch.pack``) is cut back into its sequences where the
positions restart at 0 (``sequences``); the logprobs land in the columns the trainer's
would (``place``), 0 between sequences and in the padding, which no loss reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from posttrain.data.batch import TokenBatch
from posttrain.errors import ConfigError
from posttrain.rollout.vllm_engine import VLLMEngine


def sequences(batch: TokenBatch) -> list[tuple[int, int, int]]:
    """(row, first column, length) of every sequence in ``batch``: a right-padded row is one, a packed row several."""
    lengths = [int(n) for n in batch.attention_mask.sum(-1).tolist()]
    if batch.position_ids is None:
        return [(r, 0, n) for r, n in enumerate(lengths)]
    out = []
    for r, n in enumerate(lengths):  # a packed row: its sequences end to end from column 0, then padding
        starts = [t for t in range(n) if t == 0 or int(batch.position_ids[r, t]) == 0]
        out += [(r, a, b - a) for a, b in zip(starts, [*starts[1:], n])]
    return out


def place(batch: TokenBatch, seqs: list[tuple[int, int, int]], values: list[list[float]]) -> torch.Tensor:
    """(B, T-1) with sequence k's ``values`` (the logprobs of its tokens 1..n-1) where the trainer's would be."""
    B, T = batch.input_ids.shape
    out = torch.zeros((B, T - 1))
    for (r, s, n), v in zip(seqs, values):
        assert len(v) == n - 1, (len(v), n)
        out[r, s : s + n - 1] = torch.tensor(v)
    return out


class VLLMTeacher(VLLMEngine):
    """A ``Teacher`` (``posttrain.train.teacher``) that scores with vLLM; sampled tokens' logprobs only."""

    full_distribution = False

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.2,
        enforce_eager: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(model_dir, tokenizer, dtype, gpu_memory_utilization, enforce_eager, seed=seed)

    def logits(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        raise ConfigError("vLLM's prompt logprobs do not give the teacher's whole distribution: "
                          "use distill.loss=sampled, or teacher.backend=local or ray", field="teacher.backend")  # fmt: skip

    def logprobs(self, batch: TokenBatch, temperature: float) -> torch.Tensor:
        if temperature not in (0.0, 1.0):
            raise ConfigError(f"vLLM's prompt logprobs are at temperature 1, not {temperature:g}: use "
                              "sampling.temperature=1, or teacher.backend=local or ray", field="teacher.backend")  # fmt: skip
        seqs = sequences(batch)
        ids = batch.input_ids.cpu()
        prompts = [[int(t) for t in ids[r, s : s + n]] for r, s, n in seqs]
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False)
        with torch.autocast("cuda", enabled=False):  # vLLM runs its own dtypes; the trainer's autocast stays out
            outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        values = [
            [float(step[tok].logprob) for tok, step in zip(p[1:], list(o.prompt_logprobs)[1:])]
            for p, o in zip(prompts, outs)
        ]
        return place(batch, seqs, values).to(batch.input_ids.device)
