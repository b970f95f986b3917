"""The notebook API: the README's snippet from any working directory, a dict config, ``override``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import posttrain
from posttrain import experiments
from posttrain.config import Config, load_config, override
from posttrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def readme_snippet() -> str:
    """The Python block of the README's "Each stage alone" section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Each stage alone", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_readme_snippet_runs_from_another_working_directory(tmp_path: Path) -> None:
    code = readme_snippet()
    # the README's step counts, made small; a 2-step SFT model never answers right, so GRPO keeps uniform groups
    small = code.replace("train.max_steps=50", "train.max_steps=2").replace(
        '"train": {"max_steps": 50}', '"train": {"max_steps": 1}, "grpo": {"drop_uniform_groups": False}'
    )
    assert small.count("max_steps=2") == 1 and small.count('"max_steps": 1') == 1, "the README snippet changed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", small], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "runs" / "notebook-sft" / "final" / "config.json").is_file()  # under the working directory
    assert (tmp_path / "runs" / "notebook-grpo" / "final" / "config.json").is_file()
    assert not (tmp_path / "runs" / "quickstart").exists()


def test_the_api_names_resolve() -> None:
    assert posttrain.override is override and posttrain.load_config is load_config
    assert set(posttrain.__all__) >= {"load_config", "override", "train_sft", "train_grpo"}


def test_a_dict_config_is_read_like_a_file(tmp_path: Path) -> None:
    data = {"optim": {"lr": 3e-4}, "train": {"max_steps": 7}, "stages": {"sft": {"optim": {"lr": 1e-3}}}}
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 3.0e-4}\ntrain: {max_steps: 7}\nstages:\n  sft: {optim: {lr: 1.0e-3}}\n")
    assert load_config(data) == load_config(path)
    assert load_config(data, ["train.max_steps=9"], stage="sft") == load_config(path, ["train.max_steps=9"], "sft")
    assert data == {"optim": {"lr": 3e-4}, "train": {"max_steps": 7}, "stages": {"sft": {"optim": {"lr": 1e-3}}}}
    assert load_config({}) == Config()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"train": {"max_step": 3}}, "dict: train.max_step: unknown key 'max_step'; did you mean 'max_steps'?"),
        ({"optim": {"lr": "fast"}}, "dict: optim.lr: expected a number, got 'fast'"),
        ({"grpo": {"advantage": "grp"}}, "dict: grpo.advantage: 'grp' is not one of "),
        ({"reward": {"components": [{"weight": 1.0}]}}, "dict: reward.components.0: missing key 'kind'"),
        ({"train": 3}, "dict: train: expected a mapping, got 3"),
        ({"grpo": {"prompts_per_step": 16}}, "dict: grpo.prompts_per_step: 'prompts_per_step' was renamed"),
        ({"stages": {"sfft": {}}}, "dict: stages.sfft: unknown key 'sfft'"),
        ({"grpo": {"minibatches": 3}}, "dict: grpo.minibatches: must divide rollout.prompts_per_step (16)"),
        (["train"], "dict: a config is a YAML file's path or a dict of sections, got list"),
    ],
)
def test_a_bad_dict_config_is_one_line_naming_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(data)  # type: ignore[arg-type]
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_override_sets_nested_fields_in_one_call_and_returns_a_new_config() -> None:
    cfg = load_config(experiments.path("quickstart"), stage="sft")
    new = override(cfg, "optim.lr=3e-4", "grpo.kl_coef=0.01", "data.arithmetic.digits=2", "lora.r=8")
    assert (new.optim.lr, new.grpo.kl_coef, new.data.arithmetic.digits) == (3e-4, 0.01, 2)
    assert new.lora is not None and new.lora.r == 8  # setting a key of an off section turns it on
    assert cfg.optim.lr == 2e-3 and cfg.lora is None  # the original is untouched
    assert new.train == cfg.train and new.optim.schedule == cfg.optim.schedule  # the rest kept
    assert override(cfg) == cfg


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("optim.lrr=1", "override: optim.lrr: unknown key 'lrr'; did you mean 'lr'?"),
        ("optim.lr=fast", "override: optim.lr: expected a number, got 'fast'"),
        ("optim.lr", "override: 'optim.lr' is not of the form section.key=value"),
        ("=3", "override: override '=3' has no key"),
        ("grpo.minibatches=3", "override: grpo.minibatches: must divide rollout.prompts_per_step (16)"),
        (
            "eval.temperature=0.5",
            "override: eval.temperature: 'temperature' was renamed: use eval.sampling.temperature",
        ),
    ],
)
def test_a_bad_override_is_one_line_naming_the_key(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        override(Config(), assignment)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
