"""datagen.backend=ray: dedup and decontaminate on Ray Data with 2 actors give the in-process rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'posttrain[ray]'")

from posttrain.config import load_config  # noqa: E402
from posttrain.recipes.data import run_data  # noqa: E402


def test_ray_data_path_equals_in_process(tmp_path: Path) -> None:
    base = [f"Sam reads {i} books and {i * 3} comics each week at the library near the school gate" for i in range(30)]
    rows = [{"question": q, "answer": str(i)} for i, q in enumerate(base)]
    rows += [{"question": base[4].lower() + ".", "answer": "d"}, {"question": base[7] + " too", "answer": "n"}]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    evals = tmp_path / "eval.jsonl"
    evals.write_text(json.dumps({"question": base[11] + " today?"}) + "\n")
    common = [f"datagen.input={train}", f"datagen.decontaminate.eval_paths=[{evals}]", "datagen.dedup.threshold=0.7",
              "datagen.batch_size=5", "datagen.fields=question"]  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for command in ("dedup", "decontaminate"):
            local, remote = tmp_path / f"{command}-local", tmp_path / f"{command}-ray"
            a = run_data(command, load_config(None, [*common, f"output_dir={local}"]))
            b = run_data(command, load_config(None, [*common, f"output_dir={remote}", "datagen.backend=ray",
                                                     "datagen.workers=2"]))  # fmt: skip
            assert a == b and a["kept"] < a["rows"]
            for name in ("kept.jsonl", "removed.jsonl"):
                assert (local / name).read_text() == (remote / name).read_text()
    finally:
        ray.shutdown()
