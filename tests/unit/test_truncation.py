"""data.truncation: over-long SFT rows, DPO pairs and RL/eval prompts are an error, cut or dropped, and counted.

The tiny character tokenizer makes lengths easy to count by hand: one token per
character, no beginning-of-sequence token added, eos (id 2) appended to completions.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from posttrain.config import load_config
from posttrain.data.tokenize import LengthCount, Limit, TooLong, encode_demo, fit_demo, fit_pair, fit_prompts
from posttrain.errors import DataError
from posttrain.models.io import load_model
from posttrain.models.tiny import char_tokenizer
from posttrain.recipes.online import draw_and_sample
from posttrain.recipes.pairwise import load_pair_data
from posttrain.recipes.sft import load_demonstrations, train_sft
from posttrain.records import Completion, SamplingParams
from posttrain.rewards.pool import LocalScorer
from posttrain.tasks.base import Example
from posttrain.tasks.preferences import PreferencePair, encode_pair, encode_pairs
from tests.conftest import FAST

TOK = char_tokenizer()
EOS = int(TOK.eos_token_id)  # type: ignore[arg-type]
SEQ8 = Limit(seq_len=8, context=64)  # train.max_seq_len=8 applies, the model's context is longer


def ids(text: str) -> list[int]:
    return list(TOK(text, add_special_tokens=False)["input_ids"])


def demo(prompt: str, completion: str, source: str = "d.jsonl:3") -> tuple[Example, Any]:
    ex = Example(id="x", prompt=prompt, completion=completion, source=source)
    return ex, encode_demo(TOK, ex, None)


# --- the limit and its message ------------------------------------------------------------


def test_the_limit_names_which_setting_applies_and_shows_the_other() -> None:
    assert Limit.of(128, 128, 2048).describe() == "train.max_seq_len=128 (the model's context is 2048)"
    assert Limit.of(128, 64).describe() == "the model's context of 64 (train.max_seq_len is 128)"
    assert Limit.of(128, 64).tokens == 64 and Limit.of(128, 128, 2048).tokens == 128
    assert Limit.of(128, 128).describe() == "train.max_seq_len=128"  # the context unknown, or not smaller


def test_error_names_train_max_seq_len_and_the_context_separately() -> None:
    ex, whole = demo("1234567890", "ab")  # 10 + 3 tokens
    with pytest.raises(TooLong) as err:
        fit_demo(ex, whole, Limit(seq_len=16, context=12), "error")
    assert str(err.value) == (
        "d.jsonl:3: completion: prompt + completion is 13 tokens, longer than the model's context of 12 "
        "(train.max_seq_len is 16); data.truncation: left, right or drop keeps going without it"
    )
    with pytest.raises(TooLong) as err:
        fit_demo(ex, whole, SEQ8, "error")
    assert str(err.value) == (
        "d.jsonl:3: prompt: prompt is 10 tokens, longer than train.max_seq_len=8 (the model's context is 64); "
        "data.truncation: left, right or drop keeps going without it"
    )
    assert isinstance(err.value, DataError)  # the CLI's one-line error


# --- SFT demonstrations ------------------------------------------------------------------


def test_a_row_that_fits_is_returned_unchanged_in_every_mode() -> None:
    ex, whole = demo("12", "ab")
    for mode in ("error", "left", "right", "drop"):
        assert fit_demo(ex, whole, SEQ8, mode) is whole  # type: ignore[arg-type]


def test_left_drops_the_prompts_start_and_keeps_the_completion_whole() -> None:
    ex, whole = demo("1234567890", "ab")  # 13 tokens, 5 over
    prompt, completion, weights = fit_demo(ex, whole, SEQ8, "left")  # type: ignore[misc]
    assert prompt == ids("67890") and completion == [*ids("ab"), EOS] and weights == [1.0] * 3
    # a leading beginning-of-sequence token stays first
    bos = int(TOK.bos_token_id)  # type: ignore[arg-type]
    prompt, _, _ = fit_demo(ex, ([bos, *whole[0]], whole[1], whole[2]), SEQ8, "left", bos=bos)  # type: ignore[misc]
    assert prompt == [bos, *ids("7890")]
    # a completion that alone leaves no room for one prompt token: dropped
    ex, whole = demo("1", "abcdefgh")  # the completion is 9 tokens
    assert fit_demo(ex, whole, SEQ8, "left") is None


def test_right_cuts_the_completions_end_and_its_eos() -> None:
    ex, whole = demo("12", "abcdefgh")  # 2 + 9 tokens
    prompt, completion, weights = fit_demo(ex, whole, SEQ8, "right")  # type: ignore[misc]
    assert prompt == ids("12") and completion == ids("abcdef") and EOS not in completion
    assert len(weights) == len(completion) == 6
    # a prompt that alone fills the limit: dropped
    ex, whole = demo("12345678", "a")
    assert fit_demo(ex, whole, SEQ8, "right") is None


def test_right_cuts_the_weights_of_a_multi_turn_demo_with_it() -> None:
    turns = [
        {"role": "user", "content": "1+1=?"},
        {"role": "assistant", "content": "#2"},
        {"role": "user", "content": "ok?"},
    ]
    ex = Example(id="c", prompt=turns, completion="yes", train_prompt_replies=True)
    whole = encode_demo(TOK, ex, None)
    n = len(whole[0]) + 4
    prompt, completion, weights = fit_demo(ex, whole, Limit(seq_len=n), "right")  # type: ignore[misc]
    assert prompt == whole[0] and completion == whole[1][:4] and weights == whole[2][:4]


def test_drop_skips_the_row() -> None:
    ex, whole = demo("1234567890", "ab")
    assert fit_demo(ex, whole, SEQ8, "drop") is None


def rows_file(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SFT_ROWS = [{"prompt": "1+1=", "completion": "2"}] * 4 + [{"prompt": "9" * 40, "completion": "1"}]


@pytest.mark.parametrize(
    ("mode", "kept", "summary"),
    [
        ("drop", 4, "dropped 1 of 5 demonstrations longer than train.max_seq_len=32"),
        ("left", 5, "cut the prompt's start of 1 of 5 demonstrations longer than train.max_seq_len=32"),
        ("right", 4, "dropped 1 of 5 demonstrations longer than train.max_seq_len=32 (too long to cut)"),
    ],
)
def test_load_demonstrations_fits_and_counts(tmp_path: Path, mode: str, kept: int, summary: str) -> None:
    data = rows_file(tmp_path / "d.jsonl", SFT_ROWS)
    cfg = load_config(None, ["data.task=jsonl", f"data.path={data}", "train.max_seq_len=32", f"data.truncation={mode}"])
    count = LengthCount()
    demos = load_demonstrations(cfg, TOK, 32, context=64, count=count)
    assert len(demos) == kept and all(len(p) + len(c) <= 32 for p, c, _ in demos)
    assert count.summary("demonstrations") == summary


def test_load_demonstrations_error_mode_and_every_row_dropped(tmp_path: Path) -> None:
    data = rows_file(tmp_path / "d.jsonl", SFT_ROWS)
    cfg = load_config(None, ["data.task=jsonl", f"data.path={data}", "train.max_seq_len=32", "data.truncation=error"])
    with pytest.raises(TooLong) as err:
        load_demonstrations(cfg, TOK, 32, context=64)
    assert err.value.render().startswith(f"{data}:5: prompt: prompt is 40 tokens, longer than train.max_seq_len=32")
    cfg = load_config(None, ["data.task=jsonl", f"data.path={data}", "train.max_seq_len=4"])
    with pytest.raises(DataError) as info:
        load_demonstrations(cfg, TOK, 4)
    assert info.value.render() == (
        f"{data}: data.truncation: no demonstration left to train on: "
        "dropped 5 of 5 demonstrations longer than train.max_seq_len=4"
    )


def test_nothing_changes_when_no_row_is_too_long(tmp_path: Path) -> None:
    data = rows_file(tmp_path / "d.jsonl", SFT_ROWS[:4])
    cfg = load_config(None, ["data.task=jsonl", f"data.path={data}"])
    count = LengthCount()
    demos = load_demonstrations(cfg, TOK, 128, count=count)
    assert demos == [encode_demo(TOK, Example("x", "1+1=", completion="2"), 128)] * 4
    assert count.summary("demonstrations") == "" and count.rows == 4


def test_the_sft_summary_line_reports_the_count(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"prompt": "1+1=", "completion": "2"}] * 4 + [{"prompt": "9" * 40, "completion": "1"}]
    data = rows_file(tmp_path / "d.jsonl", rows)
    cfg = load_config(None, [*FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}",
                             "train.max_seq_len=32", "train.batch_size=2", "train.micro_batch_size=2",
                             "train.max_steps=1", f"output_dir={tmp_path / 'o'}"])  # fmt: skip
    train_sft(cfg)
    said = " ".join(capsys.readouterr().err.split())
    assert "sft: 1 steps, 4 demonstrations (dropped 1 of 5 demonstrations longer than train.max_seq_len=32)" in said


# --- DPO pairs --------------------------------------------------------------------------


def pair(prompt: str, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair("p", prompt, chosen, rejected, "prefs.jsonl:2")


def test_pair_error_names_the_reply_and_both_limits() -> None:
    with pytest.raises(TooLong) as err:
        encode_pair(TOK, pair("12", "ab", "abcdefgh"), SEQ8)
    assert err.value.render() == (
        "prefs.jsonl:2: rejected: prompt + rejected is 11 tokens, longer than train.max_seq_len=8 "
        "(the model's context is 64); data.truncation: left, right or drop keeps going without it"
    )


def test_pair_left_leaves_room_for_the_longer_reply() -> None:
    whole = encode_pair(TOK, pair("123456", "ab", "abcd"), None)  # 6 + max(3, 5) = 11 tokens
    prompt, chosen, rejected = fit_pair(Example("p", "123456"), whole, SEQ8, "left")  # type: ignore[misc]
    assert prompt == ids("456") and chosen == whole[1] and rejected == whole[2]
    assert fit_pair(Example("p", "1"), encode_pair(TOK, pair("1", "a", "abcdefgh"), None), SEQ8, "left") is None


def test_pair_right_cuts_each_reply_that_does_not_fit() -> None:
    whole = encode_pair(TOK, pair("123", "ab", "abcdefgh"), None)
    prompt, chosen, rejected = fit_pair(Example("p", "123"), whole, SEQ8, "right")  # type: ignore[misc]
    assert prompt == ids("123") and chosen == whole[1] and rejected == ids("abcde")  # the chosen fits with its eos


def test_encode_pairs_drops_and_counts() -> None:
    pairs = [pair("1", "a", "b")] * 3 + [pair("1" * 20, "a", "b")]
    count = LengthCount("drop", SEQ8)
    out = encode_pairs(TOK, pairs, SEQ8, "prefs.jsonl", "drop", count)
    assert len(out) == 3 and count.summary("pairs") == "dropped 1 of 4 pairs longer than train.max_seq_len=8"
    with pytest.raises(DataError, match="no preference pair left to train on: dropped 4 of 4 pairs"):
        encode_pairs(TOK, pairs[3:] * 4, SEQ8, "prefs.jsonl", "drop", LengthCount("drop", SEQ8))


def test_load_pair_data_reports_the_count_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"prompt": f"{i}+1=", "chosen": "a", "rejected": "b"} for i in range(20)]
    rows.append({"prompt": "9" * 40, "chosen": "a", "rejected": "b"})
    data = rows_file(tmp_path / "p.jsonl", rows)
    cfg = load_config(None, [f"data.path={data}", "train.max_seq_len=32"])
    train, test = load_pair_data(cfg, TOK, 32, "dpo", context=64)
    assert len(train) + len(test) == 20
    said = " ".join(capsys.readouterr().err.split())
    assert said.startswith("dpo: ") and "dropped 1 of " in said and "pairs longer than train.max_seq_len=32" in said


# --- RL and evaluation prompts ------------------------------------------------------------


def test_a_prompt_with_no_room_for_max_new_tokens_is_an_error_naming_both_numbers() -> None:
    examples = [Example("a", "1+1=", source="t.jsonl:1"), Example("b", "9" * 60, source="t.jsonl:2")]
    prompts = [ids(ex.prompt) for ex in examples]  # type: ignore[arg-type]
    with pytest.raises(TooLong) as err:
        fit_prompts(examples, prompts, 16, 64, "error", "eval.sampling.max_new_tokens")
    assert err.value.render() == (
        "t.jsonl:2: prompt: prompt is 60 tokens; with eval.sampling.max_new_tokens=16 that is 76, longer than "
        "the model's context of 64; data.truncation: drop skips such prompts"
    )
    for mode in ("drop", "left", "right"):  # a prompt is never cut
        kept, kept_prompts, too_long = fit_prompts(examples, prompts, 16, 64, mode)  # type: ignore[arg-type]
        assert kept == examples[:1] and kept_prompts == prompts[:1] and too_long == 1
    assert fit_prompts(examples, prompts, 16, None, "error") == (examples, prompts, 0)  # no known context


class FixedTask:
    name = "fixed"

    def __init__(self, prompts: list[str]) -> None:
        self.rows = [Example(str(i), p, answer="2", source=f"t.jsonl:{i + 1}") for i, p in enumerate(prompts)]

    def examples(self, split: str, n: int | None, seed: int) -> list[Example]:
        return self.rows[:n]

    def prompt(self, example: Example) -> Any:
        return example.prompt


class EchoEngine:
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        return [Completion(p, [5, EOS], [-0.5, -0.5], "stop", "2") for p in prompts]


def rl_draw(tiny_dir: Path, mode: str) -> Any:
    cfg = load_config(None, [*FAST, f"data.truncation={mode}", "rollout.prompts_per_step=3",
                             "rollout.samples_per_prompt=2", "sampling.max_new_tokens=16"])  # fmt: skip
    model = load_model(tiny_dir)  # a context of 64
    run = SimpleNamespace(model=model, tokenizer=TOK)
    task = FixedTask(["1+1=", "9" * 60, "2+0="])
    scorer = LocalScorer(lambda exs, texts: [1.0] * len(texts))
    return draw_and_sample(cfg, 0, run, task, EchoEngine(), scorer, doom_groups=True)  # type: ignore[arg-type]


def test_rl_drop_skips_the_prompts_group_and_counts_it(tiny_dir: Path) -> None:
    groups = rl_draw(tiny_dir, "drop")
    assert [ex.id for ex in groups.examples] == ["0", "2"] and tuple(groups.scores.shape) == (2, 2)
    assert groups.prompts_too_long == 1
    with pytest.raises(TooLong, match="prompt is 60 tokens; with sampling.max_new_tokens=16 that is 76"):
        rl_draw(tiny_dir, "error")


def test_rl_nothing_changes_when_every_prompt_fits(tiny_dir: Path) -> None:
    cfg = load_config(None, [*FAST, "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2"])
    run = SimpleNamespace(model=load_model(tiny_dir), tokenizer=TOK)
    scorer = LocalScorer(lambda exs, texts: [1.0] * len(texts))
    groups = draw_and_sample(cfg, 0, run, FixedTask(["1+1=", "2+0="]), EchoEngine(), scorer, True)  # type: ignore[arg-type]
    assert [ex.id for ex in groups.examples] == ["0", "1"] and groups.prompts_too_long == 0
