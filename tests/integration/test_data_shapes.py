"""The data a user brings, end to end: every assistant turn of a conversation trains, and
`posttrain eval` on a file evaluates the whole file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.models.io import load_model, load_tokenizer
from posttrain.recipes.sft import demo_batch, load_demonstrations
from tests.conftest import FAST

TURNS = [
    {"role": "user", "content": "1+1=?"},
    {"role": "assistant", "content": "#2"},
    {"role": "user", "content": "and 2+2=?"},
    {"role": "assistant", "content": "#4"},
]


def conversations(path: Path, n: int = 32) -> Path:
    path.write_text("".join(json.dumps({"messages": TURNS}) + "\n" for _ in range(n)))
    return path


def test_every_assistant_turn_of_a_conversation_trains(tmp_path: Path, tiny_dir: Path) -> None:
    data = conversations(tmp_path / "chat.jsonl")
    tok = load_tokenizer(tiny_dir)
    trained: dict[str, str] = {}
    for train_on in ("all_assistant", "last_assistant"):
        cfg = load_config(None, [*FAST, "data.task=jsonl", f"data.path={data}", f"data.train_on={train_on}"])
        demos = load_demonstrations(cfg, tok, 128)
        batch = demo_batch(demos, [0], int(tok.pad_token_id))  # type: ignore[arg-type]
        targets = batch.input_ids[0, 1:][batch.response_mask[0] > 0]
        trained[train_on] = tok.decode(targets.tolist(), skip_special_tokens=True)
    # both replies are targets by default; the turns between them are context, not targets
    assert "#2" in trained["all_assistant"] and "#4" in trained["all_assistant"]
    assert "2+2" not in trained["all_assistant"]
    assert "#2" not in trained["last_assistant"] and "#4" in trained["last_assistant"]
    out = tmp_path / "sft"
    args = ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}", f"output_dir={out}",
            "train.max_steps=2", "optim.lr=3e-3"]  # fmt: skip
    assert main(args) == 0
    before, after = load_model(tiny_dir).state_dict(), load_model(out / "final").state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_eval_on_a_file_evaluates_all_of_it(tmp_path: Path, tiny_dir: Path) -> None:
    rows = [{"prompt": f"{i}+1=?\n", "answer": str(i + 1)} for i in range(12)]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "e"
    args = ["eval", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}", "eval.num_problems=0",
            f"output_dir={out}"]  # fmt: skip
    assert main(args) == 0
    record = json.loads((out / "eval.json").read_text())["model"]
    assert record["num_problems_used"] == 12 and record["num_problems"] == 12  # not the hash split's share
