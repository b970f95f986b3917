"""Every bad input the CLI promises to reject: one line naming file, line and field; exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from posttrain.cli import main
from tests.conftest import FAST


def run_err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_unknown_config_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  max_step: 3\n")
    err = run_err(capsys, ["sft", "--config", str(cfg)])
    assert err == f"posttrain: error: {cfg}:2: train.max_step: unknown key 'max_step'; did you mean 'max_steps'?"


def test_wrong_type_override(capsys: pytest.CaptureFixture[str]) -> None:
    err = run_err(capsys, ["sft", "optim.lr=fast"])
    assert err == "posttrain: error: command line: optim.lr: expected a number, got 'fast'"


def test_malformed_json_line(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n{oops\n")
    err = run_err(capsys, ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}",
                           f"output_dir={tmp_path / 'o'}"])  # fmt: skip
    assert err.startswith(f"posttrain: error: {data}:2: ")


def test_missing_field_and_wrong_type(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n" + json.dumps({"completion": "x"}) + "\n")
    args = ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}", f"output_dir={tmp_path}"]
    assert "d.jsonl:2: prompt: missing field 'prompt'" in run_err(capsys, args)
    data.write_text(json.dumps({"prompt": 5, "completion": "b"}) + "\n")
    assert run_err(capsys, args).endswith(f"{data}:1: prompt: expected a string, got int")


def test_prompt_longer_than_context(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": "1+1=?", "completion": "2"}] * 3 + [{"prompt": "9" * 200, "completion": "1"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}", "train.batch_size=2",
            "train.micro_batch_size=2", f"output_dir={tmp_path / 'o'}"]  # fmt: skip
    err = run_err(capsys, [*args, "data.truncation=error"])
    assert err.endswith(
        f"{data}:4: prompt: prompt is 200 tokens, longer than the model's context of 64 (train.max_seq_len is 128); "
        "data.truncation: left, right or drop keeps going without it"
    )
    # the default drops the row, counts it and trains on the rest
    assert main([*args, f"output_dir={tmp_path / 'd'}"]) == 0
    assert "dropped 1 of 4 demonstrations" in capsys.readouterr().err


def test_model_dir_that_is_not_a_causal_lm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bert = tmp_path / "vit"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTModel"]}))
    err = run_err(capsys, ["eval", *FAST, f"model.path={bert}", f"output_dir={tmp_path / 'o'}"])
    assert err == (
        f"posttrain: error: {bert / 'config.json'}: model_type: "
        "not a causal language model (model_type='vit', architectures=['ViTModel'])"
    )
    err = run_err(capsys, ["eval", f"model.path={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o'}"])
    assert err == f"posttrain: error: {tmp_path / 'nope'}: model.path: model directory not found"


def test_vllm_backend_without_a_gpu_or_vllm(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CI has neither: the run stops at the engine's construction with the fix, not a traceback."""
    err = run_err(capsys, ["grpo", *FAST, f"model.path={tiny_dir}", "engine.backend=vllm",
                           f"output_dir={tmp_path / 'o'}"])  # fmt: skip
    assert err.startswith("posttrain: error: engine.backend: the vllm backend needs ")


# --- inputs that used to succeed silently, training nothing or the wrong thing ---------------


def test_data_path_without_data_task_jsonl(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`posttrain sft data.path=my.jsonl` used to train 20,000 generated arithmetic demonstrations, never reading it."""
    data = tmp_path / "my.jsonl"
    data.write_text(json.dumps({"prompt": "1+1=", "completion": "2"}) + "\n")
    err = run_err(capsys, ["sft", *FAST, f"model.path={tiny_dir}", f"data.path={data}", f"output_dir={tmp_path / 'o'}"])
    assert err == (
        f"posttrain: error: data.task: data.path={data} is set, but data.task is 'arithmetic' (the built-in "
        "generated problems), which never reads it: set data.task=jsonl to use the file, or remove data.path"
    )
    assert not (tmp_path / "o" / "final").exists()


def _hand_written_model(root: Path, config: dict[str, object]) -> Path:
    """A directory with a config.json written by hand and a (never read) weights file: no download."""
    root.mkdir()
    (root / "config.json").write_text(json.dumps(config))
    (root / "model.safetensors").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    ("config", "found"),
    [
        ({"model_type": "roberta", "architectures": ["RobertaForMaskedLM"]}, "model_type: not a causal language "
         "model: model_type='roberta' (architectures=['RobertaForMaskedLM']) is an encoder that attends in both "
         "directions (its config has no is_decoder: true); use a decoder-only model"),
        ({"model_type": "bert", "architectures": ["BertForSequenceClassification"]}, "model_type: not a causal "
         "language model: model_type='bert' (architectures=['BertForSequenceClassification']) is an encoder"),
        ({"model_type": "llama", "architectures": ["LlamaModel"]}, "architectures: not a causal language model "
         "(architectures=['LlamaModel'], model_type='llama')"),
        ({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}, "architectures: "
         "architectures=['LlamaForSequenceClassification']: a reward model or classifier, not a causal language model"),
    ],
    ids=["roberta-masked-lm", "bert-classifier", "llama-base-model", "llama-reward-model"],
)  # fmt: skip
def test_a_masked_lm_or_classifier_is_not_trained_as_a_causal_lm(
    tmp_path: Path, config: dict[str, object], found: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A masked LM (RoBERTa) used to be trained as if it were causal: transformers loads it as *ForCausalLM."""
    model = _hand_written_model(tmp_path / "m", config)
    err = run_err(capsys, ["sft", *FAST, f"model.path={model}", f"output_dir={tmp_path / 'o'}"])
    assert err.startswith(f"posttrain: error: {model / 'config.json'}: {found}"), err


def test_a_reward_model_dir_is_not_evaluated_as_a_policy(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """eval loads the tokenizer first (a reward model's directory has one): load_model refuses the head."""
    rm = tmp_path / "rm"
    shutil.copytree(tiny_dir, rm)
    config = json.loads((rm / "config.json").read_text())
    (rm / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    err = run_err(capsys, ["eval", *FAST, f"model.path={rm}", f"output_dir={tmp_path / 'o'}"])
    assert err.startswith(f"posttrain: error: {rm / 'config.json'}: architectures: architectures=")


@pytest.mark.parametrize(
    ("key", "value", "found"),
    [
        ("hidden_size", 48, "the sizes in config.json do not match the weights: model.embed_tokens.weight is "),
        ("num_hidden_layers", 3, "the sizes in config.json do not match the weights: 9 weights of the model it "
         "describes are not in the weights files (first: model.layers.2."),
        ("num_hidden_layers", 1, "the sizes in config.json do not match the weights: the weights files hold 9 "
         "tensors the model it describes has no place for (first: model.layers.1."),
    ],
    ids=["hidden-size", "more-layers", "fewer-layers"],
)  # fmt: skip
def test_config_sizes_that_do_not_match_the_weights(
    tmp_path: Path, tiny_dir: Path, key: str, value: int, found: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """transformers refuses a shape mismatch with a pointer to a report the CLI silences; fewer or more
    layers than the weights hold used to load with random (or ignored) layers."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, key: value}))
    err = run_err(capsys, ["sft", *FAST, f"model.path={bad}", "train.max_steps=1", f"output_dir={tmp_path / 'o'}"])
    assert err.startswith(f"posttrain: error: {bad / 'config.json'}: {found}"), err


def test_output_dir_that_is_a_file_or_under_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a directory\n")
    err = run_err(capsys, ["sft", *FAST, f"output_dir={blocker}"])
    assert err == f"posttrain: error: output_dir: {blocker} is a file, not a directory: choose another output_dir"
    err = run_err(capsys, ["eval", *FAST, f"output_dir={blocker / 'a' / 'b'}"])
    assert err == (
        f"posttrain: error: output_dir: {blocker / 'a' / 'b'} cannot be created: {blocker} is a file, "
        "not a directory; choose another output_dir"
    )


@pytest.mark.parametrize(
    ("answer", "scored"),
    [(None, "32 of 32 samples unscored; "), ("987654321", "0 of 32 samples unscored; mean reward 0; ")],
    ids=["null-answers", "never-right"],
)
def test_grpo_that_never_updates_says_so(
    tmp_path: Path, tiny_dir: Path, answer: str | None, scored: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No usable gold answer (null), or one the model never gets: every group uniform, every step skipped.

    It used to exit 0 having trained nothing; final/ is still saved.
    """
    data, out = tmp_path / "q.jsonl", tmp_path / "o"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=?", "answer": answer}) + "\n" for i in range(20)))
    assert main(["grpo", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}",
                 f"data.eval_path={data}", "train.max_steps=2", f"output_dir={out}"]) == 2  # fmt: skip
    printed = capsys.readouterr().err
    err = printed.strip().splitlines()[-1]  # after the progress lines: the error, in one line
    assert "Traceback" not in printed
    assert err == (
        "posttrain: error: grpo: 2 iterations and not one optimiser update: 8 of 8 groups dropped (every sample "
        f"the same reward, or one unscored), {scored}{out / 'final'} is the starting model. Check that the "
        "reward can tell samples apart: the rows' gold answers (null, or not parseable by data.verifier / "
        "data.format), reward.components, and a model that sometimes answers right (SFT first); or keep "
        "uniform groups with grpo.drop_uniform_groups=false"
    )
    assert (out / "final" / "config.json").is_file()  # saved as before


def test_preference_pairs_with_identical_replies(
    tmp_path: Path, tiny_dir: Path, prefs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """chosen == rejected (or both empty) trains at loss ln 2 with zero gradient: all such is refused, a few dropped."""
    same = tmp_path / "same.jsonl"
    same.write_text("".join(json.dumps({"prompt": f"{i}+1=", "chosen": r, "rejected": r}) + "\n"
                            for i, r in enumerate(["#1", "", "#3"] * 8)))  # fmt: skip
    args = ["dpo", *FAST, f"model.path={tiny_dir}", "train.max_steps=1", f"data.eval_path={same}"]
    err = run_err(capsys, [*args, f"data.path={same}", f"output_dir={tmp_path / 'o'}"])
    assert err == (
        f"posttrain: error: {same}:1: rejected: all 24 preference pairs have identical chosen and rejected "
        "replies: no preference to learn"
    )
    mixed = tmp_path / "mixed.jsonl"
    rows = prefs.read_text().splitlines()
    mixed.write_text("\n".join(rows[:40]) + "\n" + same.read_text())
    args[-1] = f"data.eval_path={prefs}"
    assert main([*args, f"data.path={mixed}", f"output_dir={tmp_path / 'o2'}"]) == 0
    err = capsys.readouterr().err
    assert (
        f"{mixed}: dropped 24 of 64 preference pairs whose chosen and rejected replies are identical "
        f"(first: {mixed}:41); they give loss ln 2 and no gradient"
    ) in err


def test_demonstrations_with_empty_replies(tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Rows with an empty prompt and reply used to train on the eos token alone: refused when all, else dropped."""
    empty = [{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]},
             {"prompt": "1+1=", "completion": ""}, {"prompt": "2+2=", "completion": "  "}] * 6  # fmt: skip
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in empty))
    args = ["sft", *FAST, f"model.path={tiny_dir}", "data.task=jsonl", f"data.path={data}", f"data.eval_path={data}",
            "train.max_steps=1", "train.batch_size=4", "train.micro_batch_size=4"]  # fmt: skip
    err = run_err(capsys, [*args, f"output_dir={tmp_path / 'o'}"])
    assert err == (
        f"posttrain: error: {data}:1: completion: every one of the 18 demonstrations has an empty reply (prompt and "
        "completion blank, or no assistant content): nothing to train on but the end-of-sequence token"
    )
    good = [{"prompt": f"{i}+1=", "completion": f"#{i + 1}"} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in good + empty))
    assert main([*args, f"output_dir={tmp_path / 'o2'}"]) == 0
    err = capsys.readouterr().err
    assert (
        f"sft: dropped 18 of 26 demonstrations with an empty reply (first: {data}:9); "
        "they would train nothing but the end-of-sequence token"
    ) in err
