"""The pure helpers of the side-by-side benchmarks (bench/common.py): GSM8K rows and decode bounds.

The benchmarks need TRL; these helpers do not, and decide what both engines see and
how a rate is judged, so they are checked here without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from common import decode_bound, decode_bounds, gsm8k_rows, peak_mib, wrong_final  # noqa: E402

from posttrain.data.tokenize import encode_prompt
from posttrain.models.tiny import char_tokenizer
from posttrain.tasks.prompting import PromptStyle
from posttrain.tasks.verifiers import get_verifier

GSM8K = Path(__file__).resolve().parents[1] / "fixtures" / "gsm8k_train_8.jsonl"


def test_gsm8k_rows_give_every_engine_the_same_strings() -> None:
    tok = char_tokenizer()
    sft, dpo, grpo = (gsm8k_rows(GSM8K, 3, tok, kind) for kind in ("sft", "dpo", "grpo"))
    assert len(sft) == len(dpo) == len(grpo) == 3
    first = sft[0]
    # the worked solution without calculator notes, as posttrain's gsm8k format trains on it
    assert "<<" not in first["completion"] and first["completion"].endswith("#### 72")
    assert [r["prompt"] for r in sft] == [r["prompt"] for r in dpo] == [r["prompt"] for r in grpo]
    # the prompt is posttrain's chat rendering of the question: the same ids as its own encoding
    question = json.loads(GSM8K.read_text().splitlines()[0])["question"]
    assert question in first["prompt"]
    messages = PromptStyle(chat=True).apply(question)
    assert tok(first["prompt"], add_special_tokens=False)["input_ids"] == encode_prompt(tok, messages)
    check = get_verifier("last_number").check
    assert grpo[0]["answer"] == "72"
    assert dpo[0]["chosen"] == first["completion"]
    assert check("72", dpo[0]["chosen"]) == 1.0 and check("72", dpo[0]["rejected"]) == 0.0
    assert dpo[0]["rejected"].rpartition("####")[0] == dpo[0]["chosen"].rpartition("####")[0]


def test_wrong_final_changes_only_the_final_number() -> None:
    assert wrong_final("3 + 4 = 7\n#### 7", "7") == "3 + 4 = 7\n#### 8"
    assert wrong_final("half\n#### 0.5", "0.5") == "half\n#### 0.51"


def test_decode_bounds() -> None:
    # 135M fp32 parameters (540 MB), 10.8 GB/s, 0.27 TFLOP/s
    bounds = decode_bounds(540_000_000, 135_000_000, 10.8e9, 0.27)
    assert bounds == pytest.approx((20.0, 1000.0))
    assert decode_bound(1, bounds) == pytest.approx(20.0)
    assert decode_bound(16, bounds) == pytest.approx(320.0)
    assert decode_bound(64, bounds) == pytest.approx(1000.0)  # the matmuls, not the bandwidth


def test_peak_mib_reads_this_process() -> None:
    if not Path("/proc/self/status").is_file():
        pytest.skip("no /proc")
    assert peak_mib() > 1
