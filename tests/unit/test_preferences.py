"""Preference data: the row shapes and formats it reads, its encoding, and every row it rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.data.tokenize import encode_prompt
from posttrain.errors import DataError
from posttrain.models.tiny import char_tokenizer
from posttrain.tasks.preferences import PreferencePair, encode_pair, load_preferences


def write_jsonl(path: Path, rows: list[Any]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_string_and_message_rows(tmp_path: Path) -> None:
    msgs = [{"role": "user", "content": "2+2?"}]
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "1+1?", "chosen": "#2", "rejected": "#3"},
            {"prompt": msgs, "chosen": [{"role": "assistant", "content": "#4"}], "rejected": "#5"},
            {"prompt": "3+3?", "chosen": [{"role": "assistant", "content": "#6"}], "rejected": "#7", "score": 1},
        ],
    )
    rows = load_preferences(path, eval_path=path)["train"]
    assert rows[0] == PreferencePair("p.jsonl:1", "1+1?", "#2", "#3", f"{path}:1")
    assert rows[1].prompt == msgs and (rows[1].chosen, rows[1].rejected) == ("#4", "#5")
    # a plain prompt with message replies is rendered as one user turn
    assert rows[2].prompt == [{"role": "user", "content": "3+3?"}]


def test_parquet_and_hash_split(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(200)]
    path = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    splits = load_preferences(str(path))
    assert len(splits["train"]) + len(splits["test"]) == 200
    assert 5 <= len(splits["test"]) <= 40  # ~10% held out by a stable hash of the prompt
    assert not {p.prompt for p in splits["train"]} & {p.prompt for p in splits["test"]}
    assert load_preferences(str(path)) == splits  # the same split every time


def test_encoding_shares_the_prompt_and_ends_in_eos() -> None:
    tok = char_tokenizer()
    prompt, chosen, rejected = encode_pair(tok, PreferencePair("x", "1+1=?\n", "#2", "#3", "f:1"), 64)
    assert tok.decode(chosen, skip_special_tokens=True) == "#2" and chosen[-1] == tok.eos_token_id
    assert tok.decode(rejected, skip_special_tokens=True) == "#3" and rejected[-1] == tok.eos_token_id
    chat = PreferencePair("y", [{"role": "user", "content": "hi"}], "yes", "no", "f:2")
    prompt, chosen, _ = encode_pair(tok, chat, 64)
    assert prompt == encode_prompt(tok, chat.prompt)  # the template's generation prompt
    assert tok.decode(chosen) == "yes</s>"


def test_reply_longer_than_the_context_names_its_field() -> None:
    with pytest.raises(DataError) as info:
        encode_pair(char_tokenizer(), PreferencePair("x", "q", "ok", "n" * 100, "d.jsonl:7"), 64)
    assert info.value.render() == "d.jsonl:7: rejected: prompt + rejected is 102 tokens, longer than the context of 64"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"chosen": "a", "rejected": "b"}, "prompt: missing field 'prompt' (expected {prompt, chosen, rejected})"),
        ({"prompt": "q", "rejected": "b"}, "chosen: missing field 'chosen' (expected {prompt, chosen, rejected})"),
        ({"prompt": "q", "chosen": "a", "rejected": 3}, "rejected: expected a string or a list of messages, got int"),
        ({"prompt": 5, "chosen": "a", "rejected": "b"}, "prompt: expected a string, got int"),
        ({"prompt": "q", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"},
         "chosen[0].role: expected role 'assistant', got 'user'"),
        ({"prompt": "q", "chosen": [{"role": "assistant"}], "rejected": "b"}, "chosen[0].content: missing field 'content'"),
        ({"prompt": [{"role": "user", "content": 1}], "chosen": "a", "rejected": "b"},
         "prompt[0].content: expected a string, got int"),
        ({"prompt": "q", "chosen": [], "rejected": "b"}, "chosen: expected at least one message"),
        (["q", "a", "b"], "expected a JSON object, got list"),
    ],
)  # fmt: skip
def test_bad_rows_name_file_line_and_field(tmp_path: Path, row: Any, expected: str) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert info.value.render() == f"{path}:2: {expected}"


def test_malformed_json_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"}) + "\n{nope\n")
    with pytest.raises(DataError) as info:
        load_preferences(str(path))
    assert info.value.render().startswith(f"{path}:2: malformed JSON")


def test_datasets_directory_of_message_rows(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")

    def row(i: int) -> dict[str, Any]:
        reply = [{"role": "assistant", "content": f"#{i}"}]
        return {
            "prompt": [{"role": "user", "content": f"q{i}"}],
            "chosen": reply,
            "rejected": [{**reply[0], "content": "?"}],
        }

    d = datasets.DatasetDict({s: datasets.Dataset.from_list([row(i) for i in range(3)]) for s in ("train", "test")})
    d.save_to_disk(str(tmp_path / "ds"))
    splits = load_preferences(str(tmp_path / "ds"))
    assert [len(splits["train"]), len(splits["test"])] == [3, 3]  # a DatasetDict brings its own test split
    first = splits["train"][0]
    assert first.prompt == [{"role": "user", "content": "q0"}] and (first.chosen, first.rejected) == ("#0", "?")
    assert first.source == f"{tmp_path / 'ds' / 'train'}:1"
