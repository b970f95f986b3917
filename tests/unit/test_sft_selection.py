"""SFT data knobs for the predict-rl variants: epochs, a data fraction, a length filter; and their validation."""

from __future__ import annotations

import pytest

from posttrain.config import DataConfig, TrainConfig, load_config
from posttrain.errors import ConfigError, DataError
from posttrain.recipes.sft import select_demonstrations, sft_steps

# (prompt ids, completion ids): completions of 1 to 10 tokens
PAIRS = [([0], list(range(n))) for n in range(1, 11)]


def test_defaults_keep_every_demonstration_and_max_steps() -> None:
    assert select_demonstrations(PAIRS, DataConfig(), 0, "x") == PAIRS
    assert sft_steps(TrainConfig(max_steps=7), steps_per_epoch=100) == 7


def test_epochs_set_the_number_of_steps() -> None:
    assert sft_steps(TrainConfig(max_steps=7, epochs=2), steps_per_epoch=30) == 60
    assert sft_steps(TrainConfig(epochs=0.5), steps_per_epoch=31) == 16  # rounded
    assert sft_steps(TrainConfig(epochs=0.01), steps_per_epoch=3) == 1  # at least one step


def test_length_filter_then_seeded_fraction_in_file_order() -> None:
    short = select_demonstrations(PAIRS, DataConfig(max_demo_tokens=3), 0, "x")
    assert [len(c) for _, c in short] == [1, 2, 3]
    long = select_demonstrations(PAIRS, DataConfig(min_demo_tokens=8), 0, "x")
    assert [len(c) for _, c in long] == [8, 9, 10]
    half = select_demonstrations(PAIRS, DataConfig(train_fraction=0.5), 0, "x")
    assert len(half) == 5 and half == sorted(half, key=lambda p: len(p[1]))  # a subset, order kept
    assert half == select_demonstrations(PAIRS, DataConfig(train_fraction=0.5), 0, "x")
    assert half != select_demonstrations(PAIRS, DataConfig(train_fraction=0.5), 1, "x")


def test_a_filter_that_keeps_nothing_is_an_error() -> None:
    with pytest.raises(DataError, match=r"^data.jsonl: data.max_demo_tokens: none of 10 demonstrations"):
        select_demonstrations(PAIRS, DataConfig(min_demo_tokens=20, max_demo_tokens=30), 0, "data.jsonl")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.train_fraction=0", r"data\.train_fraction: must be in \(0, 1\]"),
        ("data.max_demo_tokens=-1", r"data\.max_demo_tokens: must be >= 0"),
        ("train.epochs=-1", r"train\.epochs: must be >= 0"),
        ("eval.chunk_size=0", r"eval\.chunk_size: must be > 0"),
        ("reward.timeout_s=0", r"reward\.timeout_s: must be > 0"),
        ("predict.large_k=64", r"predict\.large_k: must be <= eval\.samples_per_problem \(16\)"),
        ("data.format=gsm9k", r"data\.format: 'gsm9k' is not one of .*did you mean 'gsm8k'\?"),
    ],
)
def test_new_settings_are_validated(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_min_above_max_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"data\.max_demo_tokens: must be >= data\.min_demo_tokens \(9\) or 0"):
        load_config(None, ["data.min_demo_tokens=9", "data.max_demo_tokens=5"])


def test_predict_rl_recipe_loads() -> None:
    from posttrain import experiments

    cfg = load_config(experiments.path("predict-rl"))
    assert len(cfg.predict.variants) >= 6
    assert cfg.predict.large_k <= cfg.eval.samples_per_problem


def test_budget_groups_for_the_equal_budget_analysis() -> None:
    from posttrain.eval.predict_rl import budget_groups

    steps = {"a": 125, "b": 250, "c": 248, "d": 500, "e": 250, "f": 260, "g": 263}
    # within 5% of the smallest in the group (248 * 1.05 = 260.4)
    assert budget_groups(steps) == [["a"], ["c", "b", "e", "f"], ["g"], ["d"]]


def test_large_k_must_be_a_power_of_two() -> None:
    with pytest.raises(ConfigError, match=r"predict\.large_k: must be a power of two"):
        load_config(None, ["eval.samples_per_problem=64", "predict.large_k=48"])
    assert load_config(None, ["eval.samples_per_problem=64", "predict.large_k=32"]).predict.large_k == 32
