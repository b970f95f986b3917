"""``posttrain merge``: a LoRA run's adapters folded into their base, as a plain Hugging Face model.

    posttrain merge --adapter runs/x/sft/final --out runs/x/sft/merged [--dtype bfloat16]

The output loads with ``AutoModelForCausalLM.from_pretrained`` alone (no peft) and
generates what base + adapters generate. posttrain itself never needs this step:
``eval``, ``generate`` and a next stage take an adapter directory as it is and
merge in memory; ``merge`` is for handing a model to tools outside posttrain.
"""

from __future__ import annotations

from pathlib import Path

from posttrain.models.io import adapter_base
from posttrain.models.lora import merge_adapter
from posttrain.train.metrics import console


def run_merge(adapter: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    merged = merge_adapter(adapter, out, dtype)
    console.print(f"merge: {adapter} over {adapter_base(adapter)} -> {merged}")
    return merged
