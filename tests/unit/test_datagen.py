"""posttrain data dedup | decontaminate | prune: planted duplicates and overlaps, hand-computed scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posttrain.cli import main
from posttrain.config import load_config
from posttrain.datagen import prune as pr
from posttrain.datagen.text import ngrams, row_text, text_hash, words
from posttrain.recipes.data import run_data


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_normalisation_and_fields() -> None:
    assert words("Tom's  apples, 3!") == ["tom", "s", "apples", "3"]
    assert text_hash("Hello, World") == text_hash("hello world!")
    assert ngrams(["a", "b", "c"], 2) == [("a", "b"), ("b", "c")]
    assert ngrams(["a"], 3) == [("a",)]
    msgs = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
    assert row_text(msgs, None) == "Q?\nA."
    assert row_text({"question": "q", "answer": "1"}, None) == "q"
    assert row_text({"question": "q", "answer": "1"}, ("question", "answer")) == "q\n1"


# 12 distinct questions, then planted: 2 exact duplicates (case/punctuation) and 1 near duplicate
_BASE = [
    f"A farmer has {i} cows and {i + 7} sheep in the field near the old red barn by the river bank today"
    for i in range(12)
]


def test_dedup_removes_planted_exact_and_near_duplicates(tmp_path: Path) -> None:
    rows = [{"question": q, "answer": str(i)} for i, q in enumerate(_BASE)]
    rows.append({"question": _BASE[3].upper() + "!!", "answer": "x"})  # line 13: exact dup of line 4
    rows.append({"question": "  " + _BASE[5].replace(" ", "  "), "answer": "y"})  # line 14: exact dup of line 6
    rows.append({"question": _BASE[8] + " and also", "answer": "z"})  # line 15: near dup of line 9
    src = _write(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out"
    cfg = load_config(None, [f"datagen.input={src}", f"output_dir={out}", "datagen.dedup.threshold=0.7"])
    summary = run_data("dedup", cfg)
    assert summary["removed"] == {"exact_duplicate": 2, "near_duplicate": 1}
    removed = _lines(out / "removed.jsonl")
    assert [(r["line"], r["duplicate_of_line"]) for r in removed] == [(13, 4), (14, 6), (15, 9)]
    assert len(_lines(out / "kept.jsonl")) == 12
    # exact only: the near duplicate stays
    cfg = load_config(None, [f"datagen.input={src}", f"output_dir={tmp_path / 'o2'}", "datagen.dedup.near=false"])
    assert run_data("dedup", cfg)["kept"] == 13


def test_decontaminate_reports_each_match(tmp_path: Path) -> None:
    long_q = "Janet has ducks that lay sixteen eggs per day and she eats three for breakfast every morning"
    evals = _write(tmp_path / "test.jsonl", [{"question": "What is two plus two?"}, {"question": long_q}])
    train = [
        {"question": "Unrelated question about trains leaving the station at noon heading west", "answer": "1"},
        {"question": "Hmm. " + long_q.upper() + " then what?", "answer": "2"},  # shares a 13-gram with eval line 2
        {"prompt": [{"role": "user", "content": "so: what is two plus two"}], "answer": "4"},  # all of eval line 1
        {"question": " ".join(long_q.split()[:12]) + " banana", "answer": "3"},  # only 12 shared words
    ]
    src = _write(tmp_path / "train.jsonl", train)
    out = tmp_path / "out"
    cfg = load_config(
        None, [f"datagen.input={src}", f"output_dir={out}", f"datagen.decontaminate.eval_paths=[{evals}]"]
    )
    summary = run_data("decontaminate", cfg)
    assert summary["kept"] == 2 and summary["removed"] == {"eval_overlap": 2}
    removed = _lines(out / "removed.jsonl")
    assert [(r["line"], r["eval_file"], r["eval_line"]) for r in removed] == [(2, str(evals), 2), (3, str(evals), 1)]
    assert len(removed[0]["ngram"].split()) == 13
    assert [r["answer"] for r in _lines(out / "kept.jsonl")] == ["1", "3"]
    # the 8-gram rule catches the 12 shared words too
    cfg = load_config(None, [f"datagen.input={src}", f"output_dir={tmp_path / 'o8'}",
                             f"datagen.decontaminate.eval_paths=[{evals}]", "datagen.decontaminate.ngram=8"])  # fmt: skip
    assert run_data("decontaminate", cfg)["kept"] == 1


def test_line_filters_and_document_score_by_hand() -> None:
    good = "This is a good clean sentence here."
    assert pr.indicators([good], 3)[0] == [(7, [1] * 14)]
    doc = pr.indicators(["CLICK HERE!!!\n- buy 1234 5678\n{var x}"], 3)[0]
    fails = [[n for n, p in zip(pr.NAMES, ps) if not p] for _, ps in doc]
    assert fails == [
        ["min_words", "upper_fraction"],
        ["terminal_punct", "not_bullet", "alpha_words", "digit_fraction"],
        ["terminal_punct", "min_words", "no_curly_brace"],
    ]
    equal = [1.0] * 14
    # (2 words * 12/14 + 4 * 10/14 + 2 * 11/14) / 8
    assert pr.document_score(doc, equal) == pytest.approx(86 / 112)
    # only terminal_punct weighs: lines 2 and 3 score 0, line 1 scores 1
    only_terminal = [1.0] + [0.0] * 13
    assert pr.document_score(doc, only_terminal) == pytest.approx(2 / 8)


def test_perplexity_weights_formula() -> None:
    # 2 lines: line 0 NLL 2 over 2 tokens, line 1 NLL 6 over 2 tokens; filter 0 keeps only line 0
    nll = [(2.0, 2), (6.0, 2)]
    passes = [[1] + [1] * 13, [0] + [1] * 13]
    w = pr.perplexity_weights(nll, passes)
    import math

    ppl_all, ppl_0 = math.exp(8 / 4), math.exp(2 / 2)
    assert w[0] == pytest.approx((ppl_all - ppl_0) / ppl_all)
    assert w[1:] == [0.0] * 13  # keeping every line does not lower the perplexity


def test_prune_removes_the_lowest_fraction(tmp_path: Path) -> None:
    rows = [{"text": "This is a good clean sentence here."}] * 3 + [{"text": "CLICK HERE!!!\n- buy 1234 5678"}]
    src = _write(tmp_path / "p.jsonl", rows)
    cfg = load_config(None, [f"datagen.input={src}", f"output_dir={tmp_path / 'o'}", "datagen.prune.fraction=0.25",
                             "datagen.output_format=parquet"])  # fmt: skip
    summary = run_data("prune", cfg)
    assert summary["removed"] == {"low_quality": 1}
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "o" / "kept.parquet").num_rows == 3
    assert _lines(tmp_path / "o" / "removed.jsonl")[0]["line"] == 4


def test_bad_input_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{not json\n')
    assert main(["data", "dedup", f"datagen.input={bad}", f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"posttrain: error: {bad}:2: malformed JSON") and "\n" not in err
    assert main(["data", "dedup", f"datagen.input={tmp_path / 'missing.jsonl'}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "missing.jsonl: file not found" in capsys.readouterr().err
    nofield = _write(tmp_path / "nf.jsonl", [{"question": "a"}, {"answer": "1"}])
    assert main(["data", "prune", f"datagen.input={nofield}", f"output_dir={tmp_path / 'o'}"]) == 2
    assert f"{nofield}:2: datagen.fields: none of the fields" in capsys.readouterr().err


def test_perplexity_weights_from_the_tiny_model(tmp_path: Path) -> None:
    rows = [{"text": "This is a good clean sentence here."}, {"text": "CLICK HERE!!!\n- buy 1234 5678\n{var x}"}]
    src = _write(tmp_path / "p.jsonl", rows)
    tiny = ["model.tiny.hidden_size=32", "model.tiny.num_layers=1", "model.tiny.num_heads=2",
            "model.tiny.intermediate_size=64"]  # fmt: skip
    cfg = load_config(None, [f"datagen.input={src}", f"output_dir={tmp_path / 'o'}", "datagen.prune.weights=perplexity",
                             "datagen.prune.fraction=0.5", *tiny])  # fmt: skip
    summary = run_data("prune", cfg)
    weights = summary["settings"]["filter_weights"]
    # every line passes these, so keeping their lines is keeping all lines: PPL_i = PPL_all, w_i = 0
    assert all(weights[n] == 0.0 for n in ("no_javascript", "no_lorem_ipsum", "max_word_length", "no_boilerplate"))
    assert all(w >= 0 for w in weights.values())
    assert summary["kept"] == 1 and summary["removed"] == {"low_quality": 1}


def test_missing_datasketch_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    import sys

    monkeypatch.setitem(sys.modules, "datasketch", None)  # what an environment without it gives: ImportError
    src = _write(tmp_path / "t.jsonl", [{"question": "a b c"}])
    assert main(["data", "dedup", f"datagen.input={src}", f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "datagen.dedup.near: near-duplicate removal needs datasketch: pip install 'posttrain[data]'" in err
    assert (
        main(["data", "dedup", f"datagen.input={src}", f"output_dir={tmp_path / 'o'}", "datagen.dedup.near=false"]) == 0
    )
