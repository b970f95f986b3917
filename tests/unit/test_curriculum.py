"""DUMP's UCB curriculum over data.tasks: the formula on hand-made histories, windows, state round trips."""

from __future__ import annotations

import io
import math

import pytest
import torch

from posttrain.config import load_config
from posttrain.config.sections import UCBConfig
from posttrain.data.curriculum import Curriculum, softmax_mix, ucb_scores
from posttrain.errors import ConfigError


def test_ucb_scores_by_hand() -> None:
    """means (0.5, 0.2), counts (10, 30), c = 1: N = 40, ln 40 = 3.68888.

    0.5 + sqrt(2 * 3.68888 / 10) = 1.35894; 0.2 + sqrt(2 * 3.68888 / 30) = 0.69591.
    """
    assert ucb_scores([0.5, 0.2], [10, 30], 1.0) == pytest.approx([1.35894, 0.69591], abs=1e-5)


def test_ucb_picks_the_under_explored_task_when_the_bonus_outweighs_the_gap() -> None:
    """means (0.5, 0.45), counts (1000, 10): 0.5 + sqrt(2 ln 1010 / 1000) = 0.61762 < 0.45 + sqrt(2 ln 1010 / 10) = 1.62624."""
    scores = ucb_scores([0.5, 0.45], [1000, 10], 1.0)
    assert scores == pytest.approx([0.61762, 1.62624], abs=1e-5)
    assert max(range(2), key=scores.__getitem__) == 1
    # with no exploration the more learnable task wins
    assert ucb_scores([0.5, 0.45], [1000, 10], 0.0) == [0.5, 0.45]
    # a task never drawn comes first
    assert ucb_scores([0.9, 0.0], [50, 0], 1.0)[1] == math.inf


def test_softmax_mix_by_hand() -> None:
    """scores (1.0, 0.9), temperature 0.1: e^0 / (e^0 + e^-1) = 0.73106."""
    assert softmax_mix([1.0, 0.9], 0.1) == pytest.approx([0.73106, 0.26894], abs=1e-5)
    assert softmax_mix([math.inf, 3.0, math.inf], 0.1) == [0.5, 0.0, 0.5]
    # a floor of 0.2, then renormalised: (0.73106, 0.2) / 0.93106
    assert softmax_mix([1.0, 0.0], 0.1, 0.2) == pytest.approx([0.99995 / 1.19995, 0.2 / 1.19995], abs=1e-4)


def test_the_window_keeps_the_recent_samples_and_the_mix_follows_learnability() -> None:
    """window 8: iterations of 4 samples each, |A| sums 4, 0, 0 for task a -> its window holds the last two (mean 0)."""
    c = Curriculum(["a", "b"], [1.0, 3.0], "ucb", UCBConfig(c=0.0, window=8, temperature=0.1))
    assert c.mix() == {"a": 0.25, "b": 0.75}  # before any sample: the configured weights
    c.observe([4.0, 1.0], [4, 4])
    assert c.learnability() == [1.0, 0.25]
    c.observe([0.0, 1.0], [4, 4])
    c.observe([0.0, 1.0], [4, 4])
    assert c.learnability() == [0.0, 0.25]  # a's first iteration left the window
    assert c.counts == [12.0, 12.0]  # n_j counts every sample ever drawn
    mix = c.mix()
    assert mix["b"] == pytest.approx(1 / (1 + math.exp(-2.5)))  # softmax((0, 0.25) / 0.1)
    fixed = Curriculum(["a", "b"], [1.0, 3.0], "fixed", UCBConfig())
    fixed.observe([4.0, 0.0], [4, 4])
    assert fixed.mix() == {"a": 0.25, "b": 0.75}


def test_state_round_trips_through_a_weights_only_checkpoint() -> None:
    c = Curriculum(["a", "b"], [1.0, 1.0], "ucb", UCBConfig(window=8))
    c.observe([3.0, 1.0], [4, 2])
    c.observe([1.0, 0.5], [4, 2])
    buf = io.BytesIO()
    torch.save({"extra": {"curriculum": c.state()}}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)["extra"]["curriculum"]
    d = Curriculum(["a", "b"], [1.0, 1.0], "ucb", UCBConfig(window=8))
    d.load(state)
    assert (d.counts, d.windows, d.mix()) == (c.counts, c.windows, c.mix())
    with pytest.raises(ValueError, match="over tasks"):
        Curriculum(["a", "c"], [1.0, 1.0], "ucb", UCBConfig()).load(state)


def test_bad_curriculum_settings_are_one_line() -> None:
    with pytest.raises(ConfigError, match="data.curriculum: ucb picks among data.tasks"):
        load_config(overrides=["data.curriculum=ucb"])
    with pytest.raises(ConfigError, match="data.ucb.temperature: must be > 0"):
        load_config({"data": {"tasks": [{"name": "a"}, {"name": "b"}], "ucb": {"temperature": 0}}})
