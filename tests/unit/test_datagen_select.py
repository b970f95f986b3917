"""posttrain data select (NaturalThoughts): each rule on a hand-made pool of traces."""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.config import load_config
from posttrain.datagen import select as se
from posttrain.recipes.data import run_data

POOL = [  # (trace, second model's answer, difficulty)
    ("First add 2 and 3. Then the answer is 5", "5", 0.1),  # decomposition; agree
    ("Wait, actually 4 times 2 is 8, not 6. The answer is 8", "6", 0.9),  # backtracking; disagree
    ("Let x be the unknown. Solve the equation: x = 7", "7", 0.5),  # algebra; agree
    ("Check: 9 - 4 = 5, verify again, 5", "4", 0.7),  # verification; disagree
    ("First 1, then 2, finally 3", "3", 0.2),  # decomposition; agree
    ("The answer is 12", "12", 0.3),  # no strategy; agree
]


def _pool(tmp_path: Path) -> Path:
    rows = [{"prompt": f"q{i}", "completion": t, "second_answer": s, "level": d} for i, (t, s, d) in enumerate(POOL)]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _select(tmp_path: Path, *overrides: str) -> tuple[list[str], dict]:
    out = tmp_path / "o"
    cfg = load_config(None, [f"datagen.input={_pool(tmp_path)}", f"output_dir={out}", *overrides])
    summary = run_data("select", cfg)
    kept = [json.loads(line)["prompt"] for line in (out / "kept.jsonl").read_text().splitlines()]
    return kept, summary


def test_strategy_tags() -> None:
    assert se.strategy_tags(POOL[1][0]) == ("backtracking",)
    assert se.strategy_tags(POOL[3][0]) == ("verification",)
    assert se.strategy_tags("First check the case, then verify") == ("verification", "case_analysis", "decomposition")
    assert se.strategy_tags("The answer is 12") == ()
    assert se.strategy_tags("checking") == ()  # whole words only


def test_length_rules(tmp_path: Path) -> None:
    # words: 10, 13, 11, 9, 6, 4
    assert _select(tmp_path, "datagen.select.num=2", "datagen.select.method=longest")[0] == ["q1", "q2"]
    kept, summary = _select(tmp_path, "datagen.select.num=2", "datagen.select.method=shortest")
    assert kept == ["q4", "q5"] and summary["selected_mean_words"] == 5.0


def test_difficulty_by_disagreement_and_by_field(tmp_path: Path) -> None:
    kept, summary = _select(tmp_path, "datagen.select.num=2", "datagen.select.method=difficulty")
    assert kept == ["q1", "q3"] and summary["pool_disagree"] == 2 and summary["selected_disagree"] == 2
    kept, summary = _select(tmp_path, "datagen.select.num=3", "datagen.select.method=difficulty")
    assert {"q1", "q3"} < set(kept) and summary["selected_disagree"] == 2
    field = ["datagen.select.method=difficulty", "datagen.select.difficulty_field=level", "datagen.select.num=2"]
    assert _select(tmp_path, *field)[0] == ["q1", "q3"]  # 0.9, 0.7


def test_diversity_covers_every_strategy_profile(tmp_path: Path) -> None:
    # 5 profiles: decomposition (x2), backtracking, algebra, verification, none: 5 picks cover all 5
    kept, summary = _select(tmp_path, "datagen.select.num=5", "datagen.select.method=diversity")
    assert summary["pool_groups"] == 5 and summary["selected_groups"] == 5
    assert len(kept) == 5 and len({"q0", "q4"} & set(kept)) == 1
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert {tuple(c["strategies"]) for c in report["chosen"]} == {
        ("decomposition",),
        ("backtracking",),
        ("algebra",),
        ("verification",),
        (),
    }


def test_ngram_clusters_and_random(tmp_path: Path) -> None:
    traces = ["a b c d e f", "a b c d e g", "x y z w v u", "x y z w v t"]
    labels = se.kmeans([se.bigram_vector(t) for t in traces], 2, seed=0)
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]
    kept, summary = _select(tmp_path, "datagen.select.num=3", "datagen.select.method=diversity",
                            "datagen.select.diversity=ngram_clusters", "datagen.select.clusters=3")  # fmt: skip
    assert len(kept) == 3 and summary["selected_groups"] == 3
    a = _select(tmp_path, "datagen.select.num=3")[0]
    assert len(a) == 3 and a == _select(tmp_path, "datagen.select.num=3")[0]  # seeded
    assert se.round_robin(["a", "a", "a", "b"], 2, 0)[0] == 3  # the rarest group goes first
