"""A ``data.path`` with the default ``data.task: arithmetic`` is refused by every command that builds a task.

Before, only SFT refused it: ``posttrain grpo|eval|generate data.path=my.jsonl`` trained on or
evaluated the generated arithmetic problems and never opened the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main
from tests.conftest import FAST


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "my.jsonl"
    rows = [{"prompt": f"{a}+{a}=", "completion": f"{2 * a}", "answer": f"{2 * a}"} for a in range(1, 5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ("sft", "data.path"),
        ("grpo", "data.path"),
        ("eval", "data.path"),
        ("generate", "data.path"),
        ("eval", "data.eval_path"),
        ("dpo", "data.path"),  # online DPO samples from the task; offline DPO reads data.path as pairs
    ],
)
def test_a_file_the_task_never_reads_is_refused(
    command: str, key: str, tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = _file(tmp_path), tmp_path / "o"
    extra = ["dpo.mode=online"] if command == "dpo" else []
    argv = [command, *FAST, *extra, f"model.path={tiny_dir}", f"{key}={data}", f"output_dir={out}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"posttrain: error: data.task: {key}={data} is set, but data.task is 'arithmetic' (the built-in "
        f"generated problems), which never reads it: set data.task=jsonl to use the file, or remove {key}"
    )
    assert not (out / "final").exists() and not (out / "generations.jsonl").exists()


def test_with_data_task_jsonl_the_file_is_read(tmp_path: Path, tiny_dir: Path) -> None:
    """The same command with the key the message names generates for the file's prompts, whole."""
    data, out = _file(tmp_path), tmp_path / "o"
    argv = ["generate", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}",
            "sampling.max_new_tokens=2", f"output_dir={out}"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == ["1+1=", "2+2=", "3+3=", "4+4="]
