"""Preference data: the row shapes and formats it reads, its encoding, and every row it rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from posttrain.data.tokenize import encode_prompt
from posttrain.errors import DataError
from posttrain.models.tiny import char_tokenizer
from posttrain.tasks.preferences import SHAPE, SHAPES, PreferencePair, encode_pair, load_preferences

NO_TURN = "ending in '\\n\\nAssistant:' to take as the prompt"


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
    every = load_preferences(str(path), test_fraction=0.0)  # data.heldout_fraction=0: nothing held out
    assert (len(every["train"]), every["test"]) == (200, [])
    assert load_preferences(str(path), test_fraction=0.5)["test"] != splits["test"]


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
        ({"chosen": "a", "rejected": "b"}, f"chosen: no 'prompt' field, and chosen and rejected share no prefix {NO_TURN}"),
        ({"prompt": "q", "rejected": "b"}, f"chosen: missing field 'chosen' (expected {SHAPE})"),
        ({"chosen": "a"}, f"rejected: missing field 'rejected' (expected {SHAPES})"),
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


# --- implicit prompts: HH-RLHF's own shape ------------------------------------------------

HH = Path(__file__).parent.parent / "fixtures" / "hh_rlhf_harmless_3.jsonl"


def test_hh_rlhf_rows_take_the_shared_dialogue_as_the_prompt() -> None:
    """Real HH-RLHF rows (tests/fixtures/README.md): the prompt is the longest shared prefix ending at
    the last "\\n\\nAssistant:" turn boundary, and the replies are what follows it."""
    raw = [json.loads(line) for line in HH.read_text().splitlines()]
    pairs = load_preferences(str(HH), eval_path=str(HH))["train"]
    assert len(pairs) == 3
    for row, pair in zip(raw, pairs):
        assert isinstance(pair.prompt, str) and pair.prompt.endswith("\n\nAssistant:")
        assert pair.prompt.startswith("\n\nHuman: ")
        assert pair.prompt + pair.chosen == row["chosen"] and pair.prompt + pair.rejected == row["rejected"]
        assert pair.chosen.startswith(" ") and "\n\nAssistant:" not in pair.chosen + pair.rejected
    assert str(pair.prompt).count("\n\nHuman:") == 2  # a multi-turn dialogue: earlier turns are prompt
    # "Assistant: Human: I'm so sorry...": a reply that itself says "Human:" does not move the boundary
    assert pairs[1].chosen.startswith(" Human: I'm so sorry")
    tok = char_tokenizer()
    prompt, chosen, rejected = encode_pair(tok, pairs[2], None)
    assert prompt == encode_prompt(tok, pairs[2].prompt)
    for ids, text in ((chosen, pairs[2].chosen), (rejected, pairs[2].rejected)):
        assert ids == tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def test_implicit_string_prompt_stops_at_the_last_shared_turn(tmp_path: Path) -> None:
    shared = "\n\nHuman: 2+2?\n\nAssistant: 4\n\nHuman: and 3+3?\n\nAssistant:"
    path = write_jsonl(tmp_path / "p.jsonl", [{"chosen": shared + " 6 it is", "rejected": shared + " 6? no, 7"}])
    [pair] = load_preferences(path, eval_path=path)["train"]
    # the replies share " 6", but the prompt ends at the turn boundary
    assert (pair.prompt, pair.chosen, pair.rejected) == (shared, " 6 it is", " 6? no, 7")


def test_implicit_conversation_rows(tmp_path: Path) -> None:
    user = {"role": "user", "content": "2+2?"}
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {
                "chosen": [user, {"role": "assistant", "content": "4"}],
                "rejected": [user, {"role": "assistant", "content": "5"}],
            }
        ],
    )
    [pair] = load_preferences(path, eval_path=path)["train"]
    assert (pair.prompt, pair.chosen, pair.rejected) == ([user], "4", "5")


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            {"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]},
            "chosen: no 'prompt' field, and chosen and rejected share no opening message to take as the prompt",
        ),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "user", "content": "b"}],
            },
            "rejected[1].role: expected role 'assistant', got 'user'",
        ),
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ],
            },
            "rejected: expected one assistant reply after the 1 messages chosen and rejected share, got 2",
        ),
        (
            {"chosen": [{"role": "user", "content": "q"}], "rejected": "b"},
            "rejected: expected a list of messages like the other reply, got str",
        ),
        ({"chosen": 1, "rejected": "b"}, "chosen: expected a string, got int"),
    ],
)
def test_bad_implicit_rows(tmp_path: Path, row: Any, expected: str) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(DataError) as info:
        load_preferences(path)
    assert info.value.render() == f"{path}:2: {expected}"
