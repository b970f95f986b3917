"""Config loading: overlays, overrides, stage merging, and every rejection message."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.config import Config, load_config
from posttrain.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    cfg = load_config()
    assert cfg == Config()
    assert str(cfg.out) == "runs/quickstart"


def test_yaml_overlay_and_dotted_override(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\noptim:\n  lr: 3e-4\ntrain: {max_steps: 7}\n")
    cfg = load_config(path, ["train.max_steps=9", "grpo.advantage=dr_grpo"])
    assert cfg.optim.lr == pytest.approx(3e-4)  # YAML 1.1 reads 3e-4 as a string; we accept it
    assert cfg.train.max_steps == 9  # the command line wins over the file
    assert cfg.grpo.advantage == "dr_grpo"
    assert str(cfg.out) == "runs/x"


def test_stage_overlay_then_command_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "optim: {lr: 1.0e-3}\nstages:\n  sft:\n    optim: {lr: 2.0e-3}\n  grpo:\n    train: {max_steps: 5}\n",
    )
    assert load_config(path, stage="sft").optim.lr == pytest.approx(2e-3)
    assert load_config(path, stage="grpo").optim.lr == pytest.approx(1e-3)
    assert load_config(path, stage="grpo").train.max_steps == 5
    assert load_config(path, ["optim.lr=5e-4"], stage="sft").optim.lr == pytest.approx(5e-4)


def test_unknown_key_names_file_line_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\noptim:\n  lr: 1.0e-3\n  warmup_step: 10\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:4: optim.warmup_step: unknown key 'warmup_step'; did you mean 'warmup_steps'?"


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"^command line: optim\.lrr: unknown key 'lrr'; did you mean 'lr'\?$"):
        load_config(None, ["optim.lrr=1"])


def test_unknown_key_inside_stage_overlay(tmp_path: Path) -> None:
    path = write(tmp_path, "stages:\n  grpo:\n    grpo:\n      clip_hgh: 0.3\n")
    with pytest.raises(ConfigError, match=r":4: grpo\.clip_hgh: unknown key 'clip_hgh'; did you mean 'clip_high'\?"):
        load_config(path, stage="sft")  # every overlay is checked, whichever stage runs


def test_wrong_type_and_choice(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  max_steps: ten\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:2: train.max_steps: expected an integer, got 'ten'"
    with pytest.raises(ConfigError, match=r"'tokenmean' is not one of .*did you mean 'token_mean'\?"):
        load_config(None, ["grpo.loss_agg=tokenmean"])


def test_cross_field_validation() -> None:
    with pytest.raises(ConfigError, match=r"grpo\.minibatches: must divide rollout\.prompts_per_step \(16\)"):
        load_config(None, ["grpo.minibatches=3"])
    with pytest.raises(ConfigError, match=r"data\.path: the jsonl task needs data\.path"):
        load_config(None, ["data.task=jsonl"])


def test_invalid_yaml_reports_line(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\noptim: {lr: 1\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+: invalid YAML"):
        load_config(path)


def test_quickstart_recipe_loads() -> None:
    from posttrain import experiments

    cfg = load_config(experiments.path("quickstart"), stage="grpo")
    assert cfg.name == "quickstart"
    assert cfg.rollout.samples_per_prompt >= 2


def test_yaml_booleans_read_as_the_word_a_choice_expects(tmp_path) -> None:
    # YAML 1.1 turns `no` into False; train.mixed_precision's choices are 'no' and 'bf16'
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: no\n")
    assert load_config(path).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(None, ["train.mixed_precision=yes"])  # still not a choice


def test_combinations_that_cannot_work_fail_at_load() -> None:
    with pytest.raises(ConfigError, match="lora.quantize"):
        load_config(None, ["lora.quantize=4bit", "dist.strategy=fsdp"])
    with pytest.raises(ConfigError, match="engine.gpu_memory_utilization: must be in"):
        load_config(None, ["engine.gpu_memory_utilization=1.5"])
    with pytest.raises(ConfigError, match="grpo.kl_estimator: a KL in the reward is the k1 estimate"):
        load_config(None, ["grpo.kl_in=reward"])
    assert load_config(None, ["grpo.kl_in=reward", "grpo.kl_estimator=k1"]).grpo.kl_in == "reward"
    assert load_config(None, ["grpo.kl_estimator=k2"]).grpo.kl_estimator == "k2"  # every estimator is reachable


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("grpo.prompts_per_step=8", "use rollout.prompts_per_step"),
        ("grpo.samples_per_prompt=4", "use rollout.samples_per_prompt"),
        ("grpo.std_normalize=false", "use grpo.advantage"),
        ("grpo.reward=reward_model", "use reward.components"),
        ("grpo.reward_model_path=x", "use reward.components"),
        ("rollout.scorer=reward_model", "use reward.components"),
        ("rollout.pairs=group", "use dpo.pairs"),
        ("rollout.reference=synced", "use rollout.ref_sync_every"),
        ("rollout.backend=ray", "use engine.backend"),
        ("rollout.workers=3", "use engine.workers"),
        ("rollout.reward_timeout_s=3", "use reward.timeout_s"),
        ("rollout.reward_workers=3", "use reward.workers"),
        ("rollout.gpu_memory_utilization=0.5", "use engine.gpu_memory_utilization"),
        ("eval.temperature=0.5", "use eval.sampling.temperature"),
        ("eval.top_p=0.5", "use eval.sampling.top_p"),
        ("eval.max_new_tokens=8", "use eval.sampling.max_new_tokens"),
        ("eval.batch_size=8", "use engine.batch_size"),
        ("eval.check_timeout_s=3", "use reward.timeout_s"),
        ("eval.check_workers=3", "use reward.workers"),
        ("train.log_every=3", "remove the key"),
    ],
)
def test_every_old_key_fails_with_one_line_naming_its_new_key(old: str, new: str) -> None:
    key = old.split("=")[0]
    with pytest.raises(ConfigError) as err:
        load_config(None, [old])
    message = str(err.value)
    assert message.startswith(f"command line: {key}: '{key.split('.')[-1]}' was renamed: ") and new in message
    assert "\n" not in message


def test_an_old_key_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "stages:\n  grpo:\n    grpo: {prompts_per_step: 8}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: grpo\.prompts_per_step: .*use rollout\.prompts_per_step"):
        load_config(path)


def test_a_rollout_section_no_longer_turns_dpo_online() -> None:
    """The old trap: any rollout key made `posttrain dpo` online and it never read data.path."""
    cfg = load_config(None, ["rollout.sync_every=2", "data.path=prefs.jsonl"])
    assert cfg.dpo.mode == "offline"
    assert load_config(None, ["dpo.mode=online"]).dpo.mode == "online"


# "Silent NaN. `optim.lr=1e6`, `optim.lr=inf` (accepted by validation) and `model.dtype=float16` on a CPU
# exit 0 with 'final loss nan' and save NaN weights [...] non-finite config values are refused at load."


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", ".inf", ".nan", "1e999"])
def test_a_non_finite_float_is_refused_at_load(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"optim.lr={raw}"])
    assert str(err.value).startswith("command line: optim.lr: expected a finite number, got ")


def test_a_non_finite_float_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "optim:\n  lr: 1e-3\ngrpo:\n  kl_coef: .nan\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:4: grpo.kl_coef: expected a finite number, got nan"
    path = write(tmp_path, "reward:\n  components:\n    - {kind: verifier, weight: .inf}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: reward\.components\.0\.weight: expected a finite number"):
        load_config(path)


def test_validate_refuses_a_non_finite_float_built_in_code() -> None:
    import dataclasses

    from posttrain.config import validate

    cfg = Config()
    bad = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, weight_decay=float("nan")))
    with pytest.raises(ConfigError, match=r"^optim\.weight_decay: must be a finite number, got nan$"):
        validate(bad)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=0", "optim.lr: must be > 0"),
        ("optim.lr=-1e-3", "optim.lr: must be > 0"),
        ("optim.beta1=1", "optim.beta1: must be in [0, 1)"),
        ("optim.beta1=-0.1", "optim.beta1: must be in [0, 1)"),
        ("optim.beta2=1.0", "optim.beta2: must be in [0, 1)"),
        ("optim.eps=0", "optim.eps: must be > 0"),
        ("optim.weight_decay=-0.01", "optim.weight_decay: must be >= 0"),
        ("train.save_every=-1", "train.save_every: must be >= 0 (0 saves only at the end)"),
        ("data.heldout_fraction=1", "data.heldout_fraction: must be in [0, 1)"),
        ("data.heldout_fraction=-0.1", "data.heldout_fraction: must be in [0, 1)"),
    ],
)
def test_optimiser_and_checkpoint_ranges(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"command line: {message}"


def test_range_edges_that_are_valid() -> None:
    cfg = load_config(None, ["optim.beta1=0", "optim.beta2=0.999", "optim.weight_decay=0", "train.save_every=0"])
    assert (cfg.optim.beta1, cfg.optim.beta2, cfg.train.save_every) == (0.0, 0.999, 0)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_model_device_accepts_the_known_names(device: str) -> None:
    assert load_config(None, [f"model.device={device}"]).model.device == device


@pytest.mark.parametrize("device", ["gpu0", "cuda0", "cuda:x", "cuda:-1", "CPU", "tpu"])
def test_model_device_refuses_other_names_with_the_choices(device: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"model.device={device}"])
    assert str(err.value) == (
        f"command line: model.device: {device!r} is not a device: use auto, cpu, cuda, cuda:N (N a GPU index) or mps"
    )


def test_float16_on_the_cpu_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.dtype=float16", "model.device=cpu"])
    message = str(err.value)
    assert message.startswith("command line: model.dtype: float16 on the CPU ")
    assert "use model.dtype=float32 or bfloat16" in message and "\n" not in message
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = write(tmp_path, "model:\n  dtype: float16\n")
    with pytest.raises(ConfigError, match=rf"^{path}:2: model\.dtype: float16 on the CPU .*\(model\.device=auto"):
        load_config(path)
    assert load_config(None, ["model.dtype=bfloat16", "model.device=cpu"]).model.dtype == "bfloat16"
    assert load_config(None, ["model.dtype=float16", "model.device=cuda"]).model.dtype == "float16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert load_config(path).model.dtype == "float16"  # auto is the GPU where there is one


# "a YAML file with two `train:` sections keeps the last silently"


def test_a_duplicate_top_level_section_names_the_second_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  max_steps: 3\noptim:\n  lr: 1e-3\ntrain:\n  batch_size: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:5: train: duplicate key 'train' (first at line 1)"


def test_a_duplicate_nested_key_names_the_second_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  max_steps: 3\n  max_steps: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}:3: train.max_steps: duplicate key 'max_steps' (first at line 2)"
    path = write(tmp_path, "stages:\n  sft:\n    optim: {lr: 1e-3, lr: 2e-3}\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: stages\.sft\.optim\.lr: duplicate key 'lr' \(first at line 3"):
        load_config(path)
    path = write(tmp_path, "reward:\n  components:\n    - kind: verifier\n      kind: length\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: reward\.components\.0\.kind: duplicate key 'kind'"):
        load_config(path)


def test_the_same_key_in_different_sections_is_not_a_duplicate(tmp_path: Path) -> None:
    path = write(tmp_path, "sampling:\n  max_new_tokens: 8\neval:\n  sampling:\n    max_new_tokens: 9\n")
    cfg = load_config(path)
    assert (cfg.sampling.max_new_tokens, cfg.eval.sampling.max_new_tokens) == (8, 9)
