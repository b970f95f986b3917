"""Progress through the long phases outside training: model loading, DPO's reference, evaluation.

Each drives the phase on the tiny model with ``logging.plain_every_s`` so small that
every update is a plain line, and checks that the display changes none of the numbers.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from posttrain.config import LoggingConfig, load_config
from posttrain.data.tokenize import encode_prompt
from posttrain.eval.cache import SampleCache
from posttrain.eval.checking import TaskChecker
from posttrain.eval.sampling import _problem_spans, check_all, draw_samples, evaluate_model, greedy_samples
from posttrain.models import io as model_io
from posttrain.models.io import load_model, load_tokenizer
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.torch_engine import TorchEngine
from posttrain.tasks.registry import make_task
from posttrain.train.metrics import use_logging
from posttrain.train.reference import cached_reference_logps, sequence_logps
from tests.conftest import FAST

EVERY_UPDATE = LoggingConfig(plain_every_s=1e-9)  # each update is far more than a nanosecond after the last


@pytest.fixture(autouse=True)
def _default_logging() -> None:
    yield
    use_logging(LoggingConfig())


def progress_counts(err: str, description: str) -> list[tuple[int, int]]:
    """(done, total) of each plain line of the phase ``description``."""
    pattern = re.compile(re.escape(description) + r" (\d+)/(\d+) \(\d+%\), .*(it/s|s/it), elapsed \d+:\d\d:\d\d")
    return [(int(m[1]), int(m[2])) for m in map(pattern.match, err.splitlines()) if m]


def test_evaluation_sampling_and_checking_advance_per_batch(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 6 problems x 4 samples in chunks of 2: two generate calls of 12 sequences, batches of 5, then 6 greedy
    overrides = [*FAST, "eval.num_problems=6", "eval.chunk_size=2", "eval.sampling.max_new_tokens=8",
                 "eval.heldout_demos=0", "eval.cache=false", "engine.batch_size=5"]  # fmt: skip
    cfg = load_config(None, overrides)
    tok = load_tokenizer(tiny_dir)
    model, task = load_model(tiny_dir, "float32", "cpu"), make_task(cfg.data, tok, whole_file=True)
    quiet = evaluate_model(model, tok, task, cfg)  # default logging: one line at each phase's end
    err = capsys.readouterr().err
    assert progress_counts(err, "eval sampling (sequences)") == [(30, 30)]
    assert progress_counts(err, "eval checking (answers)") == [(30, 30)]

    use_logging(EVERY_UPDATE)
    shown = evaluate_model(model, tok, task, cfg)
    err = capsys.readouterr().err
    assert progress_counts(err, "eval sampling (sequences)") == [
        (5, 30), (10, 30), (12, 30), (17, 30), (22, 30), (24, 30), (29, 30), (30, 30)  # per generation batch
    ]  # fmt: skip
    # 5 checks a problem (4 samples and the greedy one), in batches of whole problems of at least 5
    assert progress_counts(err, "eval checking (answers)") == [(5 * p, 30) for p in range(1, 7)]
    assert shown == quiet


def test_a_progress_callback_changes_no_sample(tiny_dir: Path) -> None:
    """The engine's per-batch report is made inside the one call: same generator, same draws."""
    tok = load_tokenizer(tiny_dir)
    engine = TorchEngine(load_model(tiny_dir, "float32", "cpu"), tok, batch_size=3)
    prompts = [encode_prompt(tok, f"{i}+{i}=") for i in range(7)]
    params = SamplingParams(1.0, 1.0, 0, 8, seed=11)
    plain = engine.generate(prompts, params)
    rows: list[int] = []
    engine.on_batch = rows.append
    reported = engine.generate(prompts, params)
    assert rows == [3, 3, 1]
    assert [(c.completion_ids, c.logprobs) for c in reported] == [(c.completion_ids, c.logprobs) for c in plain]
    assert len({c.text for c in plain}) > 1  # really sampled: the comparison is not between empty strings


def test_checks_in_batches_of_whole_problems_equal_one_call(tiny_dir: Path) -> None:
    assert _problem_spans([0, 0, 1, 1, 1, 2], 2) == [(0, 2), (2, 5), (5, 6)]
    assert _problem_spans([0, 0, 1, 1, 1, 2], 100) == [(0, 6)]
    assert _problem_spans([], 4) == []
    cfg = load_config(None, [*FAST, "eval.num_problems=5", "eval.chunk_size=2", "eval.sampling.max_new_tokens=8"])
    tok = load_tokenizer(tiny_dir)
    task = make_task(cfg.data, tok, whole_file=True)
    problems = task.examples("test", 5, 0)
    prompts = [encode_prompt(tok, task.prompt(ex)) for ex in problems]
    engine = TorchEngine(load_model(tiny_dir, "float32", "cpu"), tok)
    off = SampleCache(Path("."), {}, enabled=False)
    samples = draw_samples(engine, prompts, cfg.eval, 0, off)
    greedy = greedy_samples(engine, prompts, cfg.eval, off)
    checker = TaskChecker(task)
    results = [check_all(checker, problems, samples, greedy, 2, off, batch_size=b) for b in (1, 7, 10**6)]
    assert results[0] == results[1] == results[2]
    assert len(results[0][0]) == 5 and all(len(row) == 4 for row in results[0][0])


def test_the_dpo_reference_precompute_advances_per_batch_and_is_cached(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(None, [*FAST, f"model.path={tiny_dir}", f"output_dir={tmp_path / 'o'}"])
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, micro_batch_size=3))  # 6 sequences a batch
    tok = load_tokenizer(tiny_dir)
    data = [(tok.encode(f"{i}+1="), tok.encode(f"#{i + 1}"), tok.encode(f"#{i + 2}")) for i in range(7)]
    use_logging(EVERY_UPDATE)
    logps = cached_reference_logps(cfg, data, int(tok.pad_token_id))
    err = capsys.readouterr().err
    assert progress_counts(err, "dpo reference (sequences)") == [(6, 14), (12, 14), (14, 14)]
    flat = [seq for p, c, r in data for seq in ((p, c), (p, r))]
    want = sequence_logps(load_model(tiny_dir, "float32", "cpu"), flat, int(tok.pad_token_id), 6).view(-1, 2)
    assert torch.equal(logps, want) and logps.shape == (7, 2)
    again = cached_reference_logps(cfg, data, int(tok.pad_token_id))  # from the cache: nothing to show
    assert torch.equal(again, logps) and progress_counts(capsys.readouterr().err, "dpo reference (sequences)") == []


def test_a_large_model_load_says_when_it_starts_and_how_long_it_took(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def ours(err: str) -> list[str]:  # transformers' own tqdm bar over the tensors may be there too
        return [line for line in err.splitlines() if line.startswith("model: ")]

    load_model(tiny_dir, "float32", "cpu")
    assert ours(capsys.readouterr().err) == []  # the tiny model's weights are under the threshold: no noise
    monkeypatch.setattr(model_io, "ANNOUNCE_BYTES", 1)
    load_model(tiny_dir, "float32", "cpu")
    size = model_io.weights_bytes(tiny_dir) / 2**20
    head = f"model: loading {tiny_dir} ({size:.0f} MiB)"
    lines = ours(capsys.readouterr().err)
    assert lines[0] == f"{head}: started"
    assert len(lines) == 2 and re.fullmatch(re.escape(head) + r": done in \d+\.\d s", lines[1])


def test_a_gguf_conversion_shows_its_steps_between_a_start_and_an_end_line(
    tmp_path: Path, tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``convert_gguf``'s own steps on the tiny model: reading a real GGUF file is left out (minutes on a busy CPU).

    The GGUF reader hands back the tiny model and its tokenizer, as transformers' reader
    hands back the dequantised model; building the float32 copy and writing it are real.
    """
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))  # only its name and size are read here
    monkeypatch.setattr(
        model_io, "load_gguf", lambda _: (load_model(tiny_dir, "float32", "cpu"), load_tokenizer(tiny_dir))
    )
    use_logging(EVERY_UPDATE)
    out = model_io.convert_gguf(gguf, tmp_path / "base")
    head = f"model: converting {gguf} (0 MiB) to {out}"
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith(head)]
    assert lines[0] == f"{head}: started" and re.fullmatch(re.escape(head) + r": done in \d+\.\d s", lines[-1])
    steps = lines[1:-1]
    assert progress_counts("\n".join(steps), head) == [(1, 3), (2, 3), (3, 3)]
    assert [s.rsplit(", ", 1)[1] for s in steps] == list(model_io.GGUF_STEPS)
    assert torch.equal(
        load_model(out, "float32", "cpu").lm_head.weight, load_model(tiny_dir, "float32", "cpu").lm_head.weight
    )
    model_io.convert_gguf(gguf, out)  # already converted: reused, so nothing to show
    assert not [line for line in capsys.readouterr().err.splitlines() if line.startswith(head)]
