"""Offline DivPO pools: the pairs each rule picks from hand-made pools, and the file's bad rows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from posttrain.config import DPOConfig
from posttrain.errors import ConfigError, DataError
from posttrain.eval.diversity import word_frequency_rarity
from posttrain.tasks.pools import ResponsePool, is_pool_file, load_pool_pairs, pairs_of_pools

# word sets {x,y} {x,z,w} {x,y} {q,r}: shares x 3/4, y 1/2, the rest 1/4
TEXTS = ["x y", "x z w", "x y", "q r"]
POOL = ResponsePool("pool:1", "p?", TEXTS, [0.9, 0.7, 0.2, 0.1], "pool.jsonl:1")
FLAT = ResponsePool("pool:2", "q?", ["a", "b"], [0.0, 0.0], "pool.jsonl:2")  # no response above the threshold


def test_word_frequency_rarity_by_hand() -> None:
    # mean over distinct words of 1 - share: (1/4 + 1/2)/2, (1/4 + 3/4 + 3/4)/3, (1/4 + 1/2)/2, (3/4 + 3/4)/2
    assert word_frequency_rarity(TEXTS) == pytest.approx([0.375, 7 / 12, 0.375, 0.75])


@pytest.mark.parametrize(
    ("rule", "criterion", "want"),
    [
        # DivPO: the high set {0, 1} (score > 0.5), its rarest is 1 (7/12); the low set {2, 3}, its commonest is 2
        ("divpo", "word_frequency", ("x z w", "x y")),
        # mean 1-2-gram cosine distance to the others: 1 is the farthest high, 2 the nearest low (it equals 0)
        ("divpo", "ngram", ("x z w", "x y")),
        ("best_worst", "logprob", ("x y", "q r")),  # scores 0.9 vs 0.1, whatever the texts
    ],
)
def test_pool_pairs_are_the_ones_the_rule_says(rule: str, criterion: str, want: tuple[str, str]) -> None:
    d = DPOConfig(pairs=rule, divpo_criterion=criterion)  # type: ignore[arg-type]
    pairs, skipped = pairs_of_pools([POOL, FLAT], d, seed=0)
    assert [(p.chosen, p.rejected) for p in pairs] == [want]
    assert pairs[0].prompt == "p?" and pairs[0].source == "pool.jsonl:1"
    assert sum(skipped.values()) == 1  # the flat pool: all_wrong (divpo) or tie (best_worst)


def test_random_pairs_cross_the_threshold() -> None:
    for seed in range(5):
        pairs, _ = pairs_of_pools([POOL], DPOConfig(pairs="random"), seed)
        assert pairs[0].chosen in ("x y", "x z w") and pairs[0].rejected in ("x y", "q r")
        assert pairs[0].id.split(":")[-1] in ("0>2", "0>3", "1>2", "1>3")  # never a high against a high


def test_unsupported_offline_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="dpo.pairs"):
        pairs_of_pools([POOL], DPOConfig(pairs="group"), 0)
    with pytest.raises(ConfigError, match="word_frequency, ngram or embedding"):
        pairs_of_pools([POOL], DPOConfig(pairs="divpo", divpo_criterion="logprob"), 0)


def write(path: Path, rows: list[object]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_pool_file_round_trip_and_bad_rows(tmp_path: Path) -> None:
    row = {"prompt": "p?", "responses": [{"text": t, "score": s} for t, s in zip(POOL.texts, POOL.scores)]}
    good = write(tmp_path / "pools.jsonl", [row])
    assert is_pool_file(good) and not is_pool_file(write(tmp_path / "pairs.jsonl", [{"prompt": "a", "chosen": "b",
                                                                                      "rejected": "c"}]))  # fmt: skip
    d = dataclasses.replace(DPOConfig(), pairs="divpo", divpo_criterion="word_frequency")
    splits = load_pool_pairs(good, good, d, 0)  # eval_path: the same file for held-out
    assert (
        [(p.chosen, p.rejected) for p in splits["train"]]
        == [("x z w", "x y")]
        == [(p.chosen, p.rejected) for p in splits["test"]]
    )
    bad = dict(row, responses=[{"text": "a", "score": 1.0}, {"text": "b", "score": "high"}])
    with pytest.raises(DataError) as e:
        load_pool_pairs(write(tmp_path / "bad.jsonl", [row, bad]), None, d, 0)
    assert e.value.line == 2 and e.value.field == "responses[1].score"


def test_aggregator_accuracy_on_hard_and_easy_problems_by_hand() -> None:
    """Five test problems, even ones easy (majority right), odd ones hard; the aggregator's checks by hand.

    samples / greedy: p0 (easy) 1 1 / 1; p1 (hard) 1 0 / 0; p2 (easy) 0 0 / 1; p3 (hard) 1 1 / 1;
    p4 (easy) has a timed-out check and is left out, as pass@k leaves it out.
    hard: pass@1 (0.5 + 1) / 2 = 0.75, greedy 0.5, majority vote 0; easy: 0.5, 1, 1; pass@3 = 1 on both.
    """
    from posttrain.eval.checking import Check
    from posttrain.tasks.aggregation import aggregation_record, format_aggregation_table
    from tests.unit.test_aggregation import task

    t = task()
    problems = t.examples("test", 5, seed=0)

    def ok(score: float) -> Check:
        return Check("ok", None, score)

    checks = [[ok(1), ok(1)], [ok(1), ok(0)], [ok(0), ok(0)], [ok(1), ok(1)], [ok(1), Check("timeout")]]
    greedy = [ok(1), ok(0), ok(1), ok(1), ok(1)]
    split = t.checked_record(problems, checks, greedy, seed=0)["aggregation_by_difficulty"]
    hard, easy = split["hard"], split["easy"]
    assert (hard["num_problems"], easy["num_problems"]) == (2, 2)
    assert hard["aggregator_pass_at_1"] == pytest.approx(0.75) and hard["aggregator_greedy"] == 0.5
    assert easy["aggregator_pass_at_1"] == pytest.approx(0.5) and easy["aggregator_greedy"] == 1.0
    assert (hard["majority_vote"], easy["majority_vote"], hard["pass_at_m"], easy["pass_at_m"]) == (0, 1, 1, 1)
    lo, hi = hard["aggregator_pass_at_1_ci"]
    assert 0.5 <= lo <= 0.75 <= hi <= 1.0
    # eval.json: the split sits in the aggregation entry; eval.md: a row per model and difficulty
    result = {"pass_at_k": {"1": 0.6}, "aggregation_by_difficulty": split}
    record = aggregation_record(t, result, 4, 0, "float32")["aggregation"]
    assert record["by_difficulty"] == split and "aggregation_by_difficulty" not in result
    table = format_aggregation_table({"agg": {"aggregation": record}})
    assert table is not None
    assert "| agg | hard: 2 | 0.750 [" in table and "| agg | easy: 2 | 0.500 [" in table
