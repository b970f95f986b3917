"""The checks behind inputs that used to succeed silently: model heads, output_dir, empty rows, equal pairs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.errors import ConfigError, DataError, ModelError
from posttrain.models.io import check_causal_lm_dir, check_causal_lm_head, is_causal_head
from posttrain.recipes.common import make_output_dir
from posttrain.recipes.sft import has_reply, with_replies
from posttrain.tasks.base import Example
from posttrain.tasks.preferences import PreferencePair, distinct_pairs


def model_dir(root: Path, config: dict[str, object]) -> Path:
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    (root / "model.safetensors").write_bytes(b"")
    return root


def test_causal_heads() -> None:
    assert is_causal_head("LlamaForCausalLM") and is_causal_head("GPT2LMHeadModel")
    assert is_causal_head("Gemma3ForConditionalGeneration")
    assert not is_causal_head("RobertaForMaskedLM") and not is_causal_head("LlamaModel")
    assert not is_causal_head("LlamaForSequenceClassification") and not is_causal_head(None)


def test_an_encoder_made_a_decoder_passes(tmp_path: Path) -> None:
    """RoBERTa with is_decoder: true is a causal LM (transformers' RobertaForCausalLM, masked to the past)."""
    check_causal_lm_head(model_dir(tmp_path / "r", {"model_type": "roberta", "is_decoder": True,
                                                    "architectures": ["RobertaForCausalLM"]}))  # fmt: skip
    with pytest.raises(ModelError, match="is an encoder that attends in both directions"):
        check_causal_lm_dir(model_dir(tmp_path / "x", {"model_type": "xlm", "architectures": ["XLMWithLMHeadModel"]}))


def test_a_reward_model_passes_the_shared_check_not_the_policy_one(tmp_path: Path) -> None:
    """The reward model's loader shares check_causal_lm_dir; a policy needs an LM head."""
    rm = model_dir(tmp_path / "rm", {"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]})
    check_causal_lm_dir(rm)
    with pytest.raises(ModelError) as err:
        check_causal_lm_head(rm)
    assert err.value.file == str(rm / "config.json") and err.value.field == "architectures"
    plain = model_dir(tmp_path / "plain", {"model_type": "llama"})  # no architectures: nothing to judge
    check_causal_lm_head(plain)


def test_output_dir_that_cannot_be_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ConfigError) as err:
        make_output_dir(tmp_path / "out")
    assert err.value.render() == f"output_dir: {tmp_path / 'out'} cannot be created: Permission denied"


def test_replies_and_empty_ones() -> None:
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "and?"}]  # fmt: skip
    assert has_reply(Example(id="a", prompt="1+1=", completion="#2"))
    assert not has_reply(Example(id="b", prompt="", completion=" \n"))
    assert has_reply(Example(id="c", prompt=conversation, completion="", train_prompt_replies=True))
    assert not has_reply(Example(id="d", prompt=conversation, completion=""))
    rows = [Example(id=str(i), prompt="q", completion=c, source=f"d.jsonl:{i + 1}") for i, c in enumerate(["a", "b"])]
    assert with_replies(rows) == rows
    with pytest.raises(DataError) as err:
        with_replies([Example(id="e", prompt="q", completion="", source="d.jsonl:7")])
    assert (err.value.file, err.value.line, err.value.field) == ("d.jsonl", 7, "completion")


def test_distinct_pairs() -> None:
    pairs = [
        PreferencePair(str(i), "q", c, r, f"p.jsonl:{i + 1}")
        for i, (c, r) in enumerate([("a", "b"), ("", ""), ("c", "c")])
    ]
    assert distinct_pairs(pairs, "p.jsonl") == pairs[:1]
    assert distinct_pairs([], "p.jsonl") == []
    with pytest.raises(DataError) as err:
        distinct_pairs(pairs[1:], "p.jsonl")
    assert err.value.render() == (
        "p.jsonl:2: rejected: all 2 preference pairs have identical chosen and rejected replies: no preference to learn"
    )
