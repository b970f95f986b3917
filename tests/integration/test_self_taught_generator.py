"""The Self-Taught Evaluator from unlabelled instructions (``data.path``): a generator model writes x'
(``PERTURB``) and answers x and x'; the judge's judgments are kept only when they pick the answer to x.

Everything is greedy (``sampling.temperature=0``), so the generator's replies are checked against a
plain argmax loop over the model's own forward pass, written out here independently of the engine.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from posttrain.config import load_config
from posttrain.data.tokenize import encode_prompt
from posttrain.errors import DataError
from posttrain.judges.parse import parse_pairwise
from posttrain.judges.self_taught import PERTURB
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.tiny import build_tiny
from posttrain.recipes.sft import train_sft
from tests.conftest import TINY

# (x, the x' the generator is taught to write for it): the other operator, so the answers differ
CONTRASTS = [("2+3", "2-3"), ("7-4", "7+4"), ("5+1", "5-1"), ("9-2", "9+2"),
             ("3+3", "3-3"), ("8-5", "8+5"), ("1+5", "1-5"), ("4-1", "4+1")]  # fmt: skip
QUESTIONS = [f"{x}=?" for x, _ in CONTRASTS]
NEW_TOKENS = 6


@pytest.fixture(scope="module")
def generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (context 512, room for the PERTURB request) taught a little: x' for PERTURB(x), answers to both.

    An untrained one answers every prompt alike ("??????"), so every pair would be dropped. 120 SFT
    steps may leave it imperfect (an x' wrong or equal to x): the test reads what it actually says.
    """
    torch.set_num_threads(1)  # module fixtures run before the per-test thread setting
    tmp = tmp_path_factory.mktemp("gen")
    start = build_tiny(dataclasses.replace(TINY, max_position_embeddings=512), tmp / "init", seed=3)
    rows = []
    for x, y in CONTRASTS:
        rows += [{"prompt": PERTURB.replace("{question}", f"{x}=?"), "completion": f"{y}=?"},
                 {"prompt": f"{x}=?", "completion": f"#{eval(x)}"}, {"prompt": f"{y}=?", "completion": f"#{eval(y)}"}]  # fmt: skip
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(None, ["data.task=jsonl", f"data.path={data}", f"data.eval_path={data}", f"model.path={start}",
                             f"output_dir={tmp / 'sft'}", "train.max_steps=120", "train.batch_size=8",
                             "train.micro_batch_size=8", "optim.lr=1e-2", "train.max_seq_len=512"])  # fmt: skip
    return train_sft(cfg)


@pytest.fixture(scope="module")
def judge(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """The tiny model after a format warm-up on random verdicts: it answers [[A]] or [[B]]."""
    torch.set_num_threads(1)  # module fixtures run before the per-test thread setting
    out = tmp_path_factory.mktemp("judge") / "sft"
    cfg = load_config(None, ["data.task=judge", "data.judge.template=short", "data.arithmetic.digits=1",
                             "data.arithmetic.num_operands=2", "data.num_train=64", f"model.path={tiny_dir}",
                             f"output_dir={out}", "train.max_steps=30", "train.batch_size=16",
                             "train.micro_batch_size=16", "optim.lr=1e-2"])  # fmt: skip
    return train_sft(cfg)


@torch.no_grad()
def greedy_reply(model_dir: Path, text: str, max_new_tokens: int) -> str:
    """The model's greedy reply to ``text`` (raw: the tiny model is a base model): argmax of a full forward pass."""
    tok, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    ids = encode_prompt(tok, text)
    out: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(model(torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == tok.eos_token_id:
            break
        out.append(nxt)
    return str(tok.decode(out, skip_special_tokens=True))


def config(tmp_path: Path, generator: Path, judge: Path):
    data = tmp_path / "instructions.jsonl"
    data.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS))
    return load_config(None, ["data.judge.template=short", f"data.path={data}", f"data.judge.ste_generator={generator}",
                              f"model.path={judge}", f"output_dir={tmp_path / 's'}", "data.judge.ste_iterations=1",
                              f"data.judge.ste_instructions={len(QUESTIONS)}", "data.judge.ste_judgments=2",
                              "sampling.temperature=0", f"sampling.max_new_tokens={NEW_TOKENS}", "train.max_steps=2",
                              "train.batch_size=4", "train.micro_batch_size=4"])  # fmt: skip


def test_a_generator_model_writes_the_pairs_and_only_right_judgments_are_kept(
    tmp_path: Path, generator: Path, judge: Path
) -> None:
    from posttrain.recipes.judge import run_self_taught

    cfg = config(tmp_path, generator, judge)
    results = run_self_taught(cfg)
    (it,) = results["iterations"]
    rows = [json.loads(x) for x in (tmp_path / "s" / "iter_1" / "judgments.jsonl").read_text().splitlines()]
    # the generator's greedy replies: x' to PERTURB(x), then the answers to x (good) and to x' (bad)
    expected = {}
    for q in QUESTIONS:
        other = greedy_reply(generator, PERTURB.replace("{question}", q), NEW_TOKENS).strip()
        good, bad = greedy_reply(generator, q, NEW_TOKENS), greedy_reply(generator, other, NEW_TOKENS)
        if other and other != q and good.strip() != bad.strip():
            expected[q] = (good.strip(), bad.strip())
    # the engine's replies, read through the dropping rule (tests/unit/test_judge.py checks it by hand), give the
    # pairs that the plain loop gives: how many survive depends on how well 120 steps taught the generator
    assert 0 < it["pairs"] == len(expected)
    assert it["prompts"] == 2 * it["pairs"]  # both orders of each pair
    # greedy: a prompt's judgments are all alike, kept when they pick the good answer
    assert 0 < it["kept"] == len(rows) <= it["prompts"]
    for row in rows:  # a kept judgment picks the generator's answer to x, on whichever side it stands
        question, rest = row["prompt"].split("\nA:\n")
        a, b = rest.removesuffix("\nbetter:").split("\nB:\n")
        good, bad = expected[question]
        assert {a, b} == {good, bad}
        assert parse_pairwise(row["completion"]) == ("A" if a == good else "B")
    assert results["start"] is None and it["eval"] is None  # no data.eval_path: nothing held out to score on
    assert (tmp_path / "s" / "iter_1" / "sft" / "final" / "config.json").is_file()
    assert it["judge"] == str(tmp_path / "s" / "iter_1" / "sft" / "final")


def test_a_generator_that_gives_no_usable_pair_is_one_error_naming_it(
    tmp_path: Path, judge: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from posttrain.cli import main
    from posttrain.recipes.judge import self_taught_pairs

    untrained = build_tiny(dataclasses.replace(TINY, max_position_embeddings=512), tmp_path / "init", seed=3)
    cfg = config(tmp_path, untrained, judge)
    with pytest.raises(DataError, match="no contrasting pair from 8 instructions") as e:
        self_taught_pairs(cfg, 0, str(judge))  # it answers every prompt "??????": x' and both answers alike
    assert e.value.field == "data.judge.ste_generator"
    (tmp_path / "bad.jsonl").write_text('{"prompt": "2+3=?"}\n{"instruction": "7-4=?"}\n')
    rc = main(["judge", "self-taught", f"data.path={tmp_path / 'bad.jsonl'}", f"model.path={judge}",
               f"output_dir={tmp_path / 'o'}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "bad.jsonl:2" in err[0] and "missing field 'prompt'" in err[0]
