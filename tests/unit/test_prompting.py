"""Chat templates, system prompts and prompt templates for string prompts; evaluation of a whole file.

The chat model here is the tiny character tokenizer with a ChatML-like template of its
own (no download): ``<|role|>\\ncontent</s>\\n`` per turn, ``<|assistant|>\\n`` to start a reply.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from posttrain.config import DataConfig, load_config
from posttrain.data.tokenize import chat_enabled, encode_example, encode_prompt, has_chat_template
from posttrain.errors import ConfigError, DataError
from posttrain.eval.sampling import eval_problems, evaluate_model, heldout_demos, problems_record
from posttrain.models.io import load_model, load_tokenizer
from posttrain.models.tiny import char_tokenizer
from posttrain.tasks.arithmetic import ArithmeticTask
from posttrain.tasks.jsonl import JsonlTask
from posttrain.tasks.prompting import PromptStyle, StyledTask, styled_prompt
from posttrain.tasks.registry import make_task

FIXTURES = Path(__file__).parent.parent / "fixtures"
GSM8K = FIXTURES / "gsm8k_test_4.jsonl"
CHATML = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def chat_tokenizer() -> Any:
    tok = char_tokenizer()
    tok.chat_template = CHATML
    return tok


def gsm8k_data(tmp_path: Path, **kwargs: Any) -> DataConfig:
    path = tmp_path / "gsm8k.jsonl"
    shutil.copy(GSM8K, path)
    return DataConfig(task="jsonl", path=str(path), format="gsm8k", **kwargs)


# --- when the chat template applies -----------------------------------------------


def test_auto_leaves_the_tiny_tokenizer_raw_and_uses_a_real_template(tiny_dir: Path) -> None:
    tiny = load_tokenizer(tiny_dir)
    assert tiny.chat_template  # the tiny tokenizer has a minimal template, for message rows...
    assert not has_chat_template(tiny)  # ...which does not make it a chat model's
    assert has_chat_template(chat_tokenizer())
    assert not chat_enabled(tiny, "auto") and chat_enabled(chat_tokenizer(), "auto")
    assert chat_enabled(tiny, "on") and not chat_enabled(chat_tokenizer(), "off")
    assert not chat_enabled(None, "auto")  # no tokenizer to look at: today's raw prompts


def test_on_needs_a_template() -> None:
    tok = char_tokenizer()
    tok.chat_template = None
    with pytest.raises(ConfigError) as err:
        chat_enabled(tok, "on")
    assert str(err.value) == "data.chat_template: is on, but the tokenizer has no chat template"


def test_the_built_in_task_is_unchanged_under_auto(tiny_dir: Path) -> None:
    """Golden traces depend on it: the same task object kind, the same prompts, the same ids."""
    tiny = load_tokenizer(tiny_dir)
    task = make_task(DataConfig(), tiny)
    assert type(task) is ArithmeticTask
    ours = task.examples("train", 8, 3)
    assert ours == ArithmeticTask(DataConfig().arithmetic).examples("train", 8, 3)
    assert all(isinstance(ex.prompt, str) for ex in ours)
    assert [encode_prompt(tiny, task.prompt(ex)) for ex in ours] == [tiny(ex.prompt)["input_ids"] for ex in ours]


def test_a_jsonl_task_with_the_tiny_tokenizer_is_unchanged_under_auto(tmp_path: Path, tiny_dir: Path) -> None:
    data = gsm8k_data(tmp_path)
    task = make_task(data, load_tokenizer(tiny_dir))
    assert type(task) is JsonlTask
    assert task.examples("train", None, 0) == JsonlTask(data.path or "", format="gsm8k").examples("train", None, 0)


# --- what a styled prompt is ------------------------------------------------------


def test_chat_on_makes_string_prompts_a_user_turn(tmp_path: Path) -> None:
    tok = chat_tokenizer()
    task = make_task(gsm8k_data(tmp_path, system_prompt="Think, then answer."), tok, whole_file=True)
    assert isinstance(task, StyledTask) and task.name == "jsonl" and task.verifier.name == "last_number"
    ex = task.examples("test", None, 0)[1]  # row 2: ASCII, which the character tokenizer spells exactly
    question = json.loads(GSM8K.read_text().splitlines()[1])["question"]
    assert ex.prompt == [
        {"role": "system", "content": "Think, then answer."},
        {"role": "user", "content": question.strip()},
    ]
    ids = encode_prompt(tok, task.prompt(ex))
    assert tok.decode(ids, skip_special_tokens=False) == (
        f"<|system|>\nThink, then answer.</s>\n<|user|>\n{question.strip()}</s>\n<|assistant|>\n"
    )


def test_prompt_template_fills_the_placeholder_and_keeps_other_braces() -> None:
    style = PromptStyle(template="Q: {question}\nPut the answer in \\boxed{}.\nA:")
    assert style.apply("What is 2+2?\n") == "Q: What is 2+2?\nPut the answer in \\boxed{}.\nA:"
    assert PromptStyle(template="<{prompt}>").apply("a {question} b") == "<a {question} b>"  # filled once
    assert style.apply("x", template=False) == "x"  # a literal prompt is not rewritten
    assert style.apply("") == ""  # a {text} row asks nothing


def test_system_prompt_without_chat_is_a_paragraph_and_joins_message_rows() -> None:
    style = PromptStyle(system_prompt="Be brief.")
    assert style.apply("2+2?\n") == "Be brief.\n\n2+2?\n"
    user = [{"role": "user", "content": "hi"}]
    assert style.apply(user) == [{"role": "system", "content": "Be brief."}, *user]
    own = [{"role": "system", "content": "Mine."}, *user]
    assert style.apply(own) == own  # a row's own system turn wins
    chat = PromptStyle(template="{question} Answer:", system_prompt="Be brief.", chat=True)
    assert chat.apply("2+2?\n") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2? Answer:"},
    ]


def test_a_template_without_a_placeholder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_task(gsm8k_data(tmp_path, prompt_template="Solve it."))
    assert str(err.value) == "data.prompt_template: expected a {question} or {prompt} placeholder, got 'Solve it.'"


def test_command_line_prompts_get_the_chat_turn_but_not_the_template(tmp_path: Path) -> None:
    task = make_task(gsm8k_data(tmp_path, prompt_template="Q: {question}"), chat_tokenizer())
    assert styled_prompt(task, "hello") == [{"role": "user", "content": "hello"}]
    assert styled_prompt(make_task(gsm8k_data(tmp_path)), "hello") == "hello"


def test_styling_keeps_the_split(tmp_path: Path) -> None:
    rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(60)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = DataConfig(task="jsonl", path=str(path), prompt_template="Q: {question}")
    raw, styled = make_task(dataclasses.replace(data, prompt_template=None)), make_task(data, chat_tokenizer())
    for split in ("train", "test"):
        assert [ex.id for ex in raw.examples(split, None, 0)] == [ex.id for ex in styled.examples(split, None, 0)]


# --- one encoding for SFT, RL sampling and evaluation -------------------------------


def test_sft_rl_and_eval_see_the_same_prompt_and_the_reply_follows_the_assistant_turn(tmp_path: Path) -> None:
    tok = chat_tokenizer()
    task = make_task(gsm8k_data(tmp_path), tok, whole_file=True)
    ex = eval_problems(task, 0, 0)[1]  # row 2: ASCII
    sft_prompt, sft_completion = encode_example(tok, ex, None)  # SFT and held-out NLL
    assert sft_prompt == encode_prompt(tok, task.prompt(ex))  # RL sampling and evaluation
    assert tok.decode(sft_prompt, skip_special_tokens=False).endswith("</s>\n<|assistant|>\n")
    assert ex.completion is not None
    assert tok.decode(sft_completion, skip_special_tokens=False) == ex.completion + "</s>\n"
    assert heldout_demos(task, 2, 0)[0].prompt == eval_problems(task, 2, 0)[0].prompt


# --- evaluating a whole file --------------------------------------------------------


def test_a_file_given_for_evaluation_is_all_test_rows(tmp_path: Path) -> None:
    data = gsm8k_data(tmp_path)
    split = make_task(data)
    whole = make_task(data, whole_file=True)
    assert split.count("test") < 4  # type: ignore[attr-defined]  # training's hash split holds out a few
    assert whole.count("test") == 4  # type: ignore[attr-defined]
    assert len(eval_problems(whole, 200, 0)) == 4  # the default cap of 200 takes them all
    assert len(eval_problems(whole, 0, 0)) == 4  # 0: all of them
    assert len(eval_problems(whole, 2, 0)) == 2
    with pytest.raises(DataError, match="every row is a test row"):
        whole.examples("train", None, 0)
    assert problems_record(whole, eval_problems(whole, 2, 0)) == {
        "num_problems_used": 2,
        "num_problems_available": 4,
        "eval_file": data.path,
    }
    assert problems_record(ArithmeticTask(), [])["eval_file"] is None


def test_with_a_held_out_file_nothing_changes(tmp_path: Path) -> None:
    data = dataclasses.replace(gsm8k_data(tmp_path), eval_path=str(GSM8K))
    task = make_task(data, whole_file=True)
    assert task.count("test") == 4 and task.test_file == str(GSM8K)  # type: ignore[attr-defined]
    assert task.examples("train", None, 0) == make_task(data).examples("train", None, 0)


def test_the_eval_record_says_how_many_problems_it_used(tmp_path: Path, tiny_dir: Path) -> None:
    rows = [{"prompt": f"{i}+1=?\n", "completion": f"#{i + 1}"} for i in range(5)]
    path = tmp_path / "small.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(
        None,
        [
            "data.task=jsonl",
            f"data.path={path}",
            "eval.samples_per_problem=2",
            "eval.chunk_size=2",
            "eval.sampling.max_new_tokens=4",
            "eval.heldout_demos=2",
            "eval.cache=false",
        ],
    )
    torch.manual_seed(0)
    tok = load_tokenizer(tiny_dir)
    result = evaluate_model(load_model(tiny_dir, "float32", "cpu"), tok, make_task(cfg.data, tok, whole_file=True), cfg)
    assert (result["num_problems_used"], result["num_problems_available"]) == (5, 5)
    assert result["eval_file"] == str(path) and result["num_problems"] == 5
