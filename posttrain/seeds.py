"""Seeds derived from (run seed, purpose, step, ...), independent of any RNG state: resume-safe."""

from __future__ import annotations


def derive_seed(*parts: int) -> int:
    """A seed for one step of one stage, independent of any RNG state: resume-safe."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B9 + (h << 6) + (h >> 2))) & 0xFFFFFFFFFFFF
    return h
