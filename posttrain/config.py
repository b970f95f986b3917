"""Configuration: frozen nested dataclasses, YAML overlays and dotted overrides.

Defaults live in code. A named experiment (``recipes/*.yaml``) is a short overlay;
the command line adds ``section.key=value`` overrides on top. Unknown keys fail
with the nearest valid key suggested, wrong types fail with the file and line of
the offending key, and sizes that must divide each other are checked at load.

A config file may hold a ``stages`` mapping (``stages.sft``, ``stages.grpo``): the
overlay for one stage of a pipeline, merged over the rest of the file when that
stage runs. ``posttrain sft --config recipes/quickstart.yaml`` therefore trains
with exactly the settings ``posttrain run`` uses for its SFT stage.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from posttrain.errors import ConfigError

STAGES = ("sft", "grpo", "eval", "generate", "dpo", "rm", "compare")


@dataclass(frozen=True)
class TinyModelConfig:
    """A small Llama built from a config when ``model.path`` is not given."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 128


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # a Hugging Face causal LM directory; None builds the tiny model
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"  # auto: cuda when available, else cpu


@dataclass(frozen=True)
class ArithmeticConfig:
    """Difficulty knobs of the built-in task."""

    num_operands: int = 3
    digits: int = 2
    operators: str = "+-"
    test_fraction: float = 0.1  # share of all problems that belong to the test split
    direct_fraction: float = 0.0  # share of demonstrations that state the answer without steps


@dataclass(frozen=True)
class DataConfig:
    task: Literal["arithmetic", "jsonl"] = "arithmetic"
    path: str | None = None  # jsonl task: JSONL, Parquet or a datasets directory
    eval_path: str | None = None  # jsonl task: held-out file; default splits `path`
    # jsonl task: the row shape, and the answer checker (auto: plain, gsm8k -> last_number,
    # math -> math_verify, mc -> choice); see posttrain/tasks/formats.py
    format: Literal["plain", "gsm8k", "math", "mc"] = "plain"
    verifier: Literal["auto", "exact", "last_number", "math_verify", "choice"] = "auto"
    num_train: int = 20000  # demonstrations generated for SFT (arithmetic task)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    # SFT data selection (defaults keep every demonstration)
    train_fraction: float = 1.0  # share of the demonstrations used: a seeded subset
    min_demo_tokens: int = 0  # drop demonstrations whose completion is shorter
    max_demo_tokens: int = 0  # drop demonstrations whose completion is longer; 0: no limit


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 100  # optimiser steps (SFT) or rollout batches (GRPO)
    batch_size: int = 64  # sequences per optimiser step (SFT)
    micro_batch_size: int = 64  # sequences per forward/backward pass
    max_seq_len: int = 128
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    save_every: int = 0  # steps between checkpoints; 0 saves only at the end
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 autocast over fp32 weights
    log_every: int = 1
    epochs: float = 0.0  # SFT: > 0 sets max_steps to this many passes over the demonstrations


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.1  # final lr / peak lr for cosine and linear


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 64


@dataclass(frozen=True)
class GRPOConfig:
    prompts_per_step: int = 16
    samples_per_prompt: int = 8
    updates_per_batch: int = 1  # passes over each batch of rollouts
    minibatches: int = 1  # optimiser steps per pass
    clip_low: float = 0.2
    clip_high: float = 0.28
    std_normalize: bool = True
    loss_agg: Literal["token_mean", "seq_mean", "constant"] = "token_mean"
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k3"] = "k3"
    drop_uniform_groups: bool = True
    overlong: Literal["mask", "penalty", "none"] = "mask"
    overlong_reward: float = 0.0  # reward given to truncated completions with overlong=penalty
    reward: Literal["verifier", "reward_model"] = "verifier"  # what scores each completion
    reward_model_path: str | None = None  # grpo.reward=reward_model: a directory saved by `posttrain rm`


@dataclass(frozen=True)
class DPOConfig:
    """The preference loss (``posttrain.algorithms.dpo``) of `posttrain dpo`."""

    loss: Literal["sigmoid", "cdpo", "ipo", "simpo", "rpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # cdpo: assumed share of flipped preference labels, in [0, 0.5)
    simpo_gamma: float = 0.5  # simpo: target reward margin gamma
    nll_coef: float = 1.0  # rpo: weight of the chosen response's per-token NLL
    cache_reference: bool = True  # offline: reference logprobs computed once, cached on disk
    cache_dir: str | None = None  # where the cache lives; default output_dir/ref_cache


@dataclass(frozen=True)
class RolloutConfig:
    """Online and semi-online DPO: `posttrain dpo` samples its own pairs when this section is set."""

    prompts_per_step: int = 16  # task prompts sampled per optimiser step
    samples_per_prompt: int = 8  # responses per prompt, from which pairs are built
    sync_every: int = 1  # optimiser steps between generator syncs; 1 online, 0 never (offline)
    reference: Literal["fixed", "synced"] = "fixed"  # the initial policy, or the generator's weights
    pairs: Literal["random", "best_worst", "group"] = "random"  # posttrain.algorithms.pairs
    scorer: Literal["verifier", "reward_model"] = "verifier"
    reward_model_path: str | None = None  # scorer=reward_model: a directory saved by `posttrain rm`


@dataclass(frozen=True)
class CompareConfig:
    """`posttrain compare`: several methods from one SFT checkpoint at equal sampling budgets."""

    seeds: int = 3  # runs per method, with seeds seed, seed+1, ...
    sampled_responses: int = 4096  # training responses each run samples (per method and seed)
    eval_points: int = 4  # held-out evaluations along each run, for the accuracy curve
    sft_path: str | None = None  # start from this checkpoint instead of training stages.sft
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {recipe: dpo|grpo, overlay}


@dataclass(frozen=True)
class EvalConfig:
    num_problems: int = 200
    samples_per_problem: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    heldout_demos: int = 200  # demonstrations for held-out NLL; 0 skips it
    batch_size: int = 256  # sequences per generation batch
    models: dict[str, str] = field(default_factory=dict)  # name -> directory (posttrain eval)
    # samples are drawn in seeded chunks of this many per problem, so a larger n reuses the cached ones
    chunk_size: int = 8
    cache: bool = True  # reuse samples and scores cached by (weights hash, problems, sampling settings)
    cache_dir: str | None = None  # default: output_dir/eval_cache
    check_timeout_s: float = 10.0  # per answer check run in a worker process (math_verify)
    check_workers: int = 2  # worker processes for those checks


@dataclass(frozen=True)
class PredictConfig:
    """`posttrain predict` and `posttrain predict-rl`: which SFT checkpoint will win after RL."""

    large_k: int = 0  # k of the pass@k predictor; 0: the largest power of two <= eval.samples_per_problem
    # predict-rl: SFT variants of one base model, name -> dotted overrides of the SFT stage
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    rl_samples_per_problem: int = 16  # predict-rl: samples per problem for post-RL pass@1


@dataclass(frozen=True)
class Config:
    name: str = "quickstart"
    output_dir: str | None = None  # default: runs/<name>
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rollout: RolloutConfig | None = None  # set: online/semi-online DPO; unset: DPO on data.path
    compare: CompareConfig = field(default_factory=CompareConfig)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.output_dir if self.output_dir else f"runs/{self.name}")


# ---------------------------------------------------------------------------
# Loading


class _Source:
    """Where each dotted key came from, so errors can name a file and line."""

    def __init__(self) -> None:
        self.lines: dict[str, tuple[str, int | None]] = {}

    def where(self, key: str) -> tuple[str | None, int | None]:
        if key in self.lines:
            return self.lines[key]
        # an error on a nested key is reported at its closest recorded parent
        while "." in key:
            key = key.rsplit(".", 1)[0]
            if key in self.lines:
                return self.lines[key]
        return None, None


def _record_lines(node: yaml.Node, prefix: str, file: str, src: _Source) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            src.lines[key] = (file, key_node.start_mark.line + 1)
            _record_lines(value_node, key + ".", file, src)


def _read_yaml(path: Path, src: _Source) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError("config file not found", file=str(path))
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"invalid YAML: {problem}", file=str(path), line=line) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of sections", file=str(path), line=1)
    if node is not None:
        _record_lines(node, "", str(path), src)
    return data


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value", file="command line")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key", file="command line")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    stage: str | None = None,
) -> Config:
    """Build a validated ``Config`` from an optional YAML file and dotted overrides.

    With ``stage`` set, the file's ``stages.<stage>`` overlay is merged over the
    rest of the file, and the command-line overrides are applied last, so
    ``optim.lr=...`` on the command line always wins. Every stage overlay is
    validated whichever stage runs, so a typo fails before earlier stages spend
    their minutes.
    """
    src = _Source()
    data: dict[str, Any] = _read_yaml(Path(path), src) if path is not None else {}
    parsed = [parse_override(text) for text in overrides]
    for key, value in parsed:
        src.lines[key] = ("command line", None)
        _set_dotted(data, key, value)
    cfg = build(Config, data, "", src)
    validate(cfg, src)
    staged = {}
    for name, overlay in cfg.stages.items():
        if name not in STAGES:
            raise _unknown("stages", name, STAGES, src)
        if not isinstance(overlay, dict):
            file, line = src.where(f"stages.{name}")
            raise ConfigError("a stage overlay must be a mapping", file=file, line=line, field=f"stages.{name}")
        staged[name] = _stage_config(data, name, parsed, src)
    return staged.get(stage, cfg) if stage is not None else cfg


def _stage_config(data: dict[str, Any], name: str, parsed: list[tuple[str, Any]], src: _Source) -> Config:
    merged = _merge({k: v for k, v in data.items() if k != "stages"}, data["stages"][name])
    for key, value in parsed:
        if not key.startswith("stages."):
            _set_dotted(merged, key, value)
    merged["stages"] = data["stages"]
    prefix = f"stages.{name}."
    stage_src = _Source()
    stage_src.lines = {k: v for k, v in src.lines.items() if not k.startswith("stages.")}
    stage_src.lines.update({k[len(prefix) :]: v for k, v in src.lines.items() if k.startswith(prefix)})
    stage_src.lines.update({k: ("command line", None) for k, _ in parsed if not k.startswith("stages.")})
    cfg = build(Config, merged, "", stage_src)
    validate(cfg, stage_src)
    return cfg


def to_dict(cfg: Any) -> Any:
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    return cfg


def _unknown(prefix: str, key: str, valid: typing.Iterable[str], src: _Source) -> ConfigError:
    dotted = f"{prefix}.{key}" if prefix else key
    file, line = src.where(dotted)
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown key {key!r}{hint}", file=file, line=line, field=dotted)


def build(cls: type, data: Any, prefix: str, src: _Source) -> Any:
    """Turn a nested dict into the dataclass ``cls``, checking keys and types."""
    if not isinstance(data, dict):
        file, line = src.where(prefix)
        raise ConfigError(f"expected a mapping, got {data!r}", file=file, line=line, field=prefix or None)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown(prefix, str(key), names, src)
        dotted = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _coerce(hints[key], value, dotted, src)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, dotted: str, src: _Source) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(expected: str) -> ConfigError:
        file, line = src.where(dotted)
        return ConfigError(f"expected {expected}, got {value!r}", file=file, line=line, field=dotted)

    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return build(tp, value, dotted, src)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, dotted, src)
    if origin is Literal:
        if value not in args:
            file, line = src.where(dotted)
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{value!r} is not one of {choices}{hint}", file=file, line=line, field=dotted)
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("a mapping")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise fail("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise fail("a string")
        return str(value)
    raise fail(str(tp))  # pragma: no cover - a schema type we do not handle


def validate(cfg: Config, src: _Source | None = None) -> None:
    """Checks that involve more than one value: sizes that must divide, ranges."""
    src = src or _Source()

    def need(ok: bool, key: str, message: str) -> None:
        if not ok:
            file, line = src.where(key)
            raise ConfigError(message, file=file, line=line, field=key)

    t, g, s, e, o = cfg.train, cfg.grpo, cfg.sampling, cfg.eval, cfg.optim
    need(t.max_steps >= 0, "train.max_steps", "must be >= 0")
    need(t.batch_size > 0, "train.batch_size", "must be > 0")
    need(t.micro_batch_size > 0, "train.micro_batch_size", "must be > 0")
    need(t.grad_clip >= 0, "train.grad_clip", "must be >= 0")
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(g.samples_per_prompt >= 2, "grpo.samples_per_prompt", "needs at least 2 samples to form a group baseline")
    need(g.prompts_per_step > 0, "grpo.prompts_per_step", "must be > 0")
    need(g.minibatches > 0, "grpo.minibatches", "must be > 0")
    need(g.updates_per_batch > 0, "grpo.updates_per_batch", "must be > 0")
    need(
        g.prompts_per_step % g.minibatches == 0,
        "grpo.minibatches",
        f"must divide grpo.prompts_per_step ({g.prompts_per_step}) so each minibatch holds whole groups",
    )
    need(0 < g.clip_low < 1, "grpo.clip_low", "must be in (0, 1)")
    need(g.clip_high > 0, "grpo.clip_high", "must be > 0")
    need(g.kl_coef >= 0, "grpo.kl_coef", "must be >= 0")
    for key, sc in (("sampling", s), ("eval", e)):
        need(sc.temperature >= 0, f"{key}.temperature", "must be >= 0 (0 is greedy)")
        need(0 < sc.top_p <= 1, f"{key}.top_p", "must be in (0, 1]")
        need(sc.max_new_tokens > 0, f"{key}.max_new_tokens", "must be > 0")
    need(s.top_k >= 0, "sampling.top_k", "must be >= 0")
    need(e.samples_per_problem > 0, "eval.samples_per_problem", "must be > 0")
    need(e.num_problems > 0, "eval.num_problems", "must be > 0")
    a = cfg.data.arithmetic
    need(a.num_operands >= 2, "data.arithmetic.num_operands", "must be >= 2")
    need(1 <= a.digits <= 6, "data.arithmetic.digits", "must be in [1, 6]")
    need(
        bool(a.operators) and set(a.operators) <= set("+-*"),
        "data.arithmetic.operators",
        "must be a non-empty string of + - *",
    )
    need(0 < a.test_fraction < 1, "data.arithmetic.test_fraction", "must be in (0, 1)")
    need(0 <= a.direct_fraction <= 1, "data.arithmetic.direct_fraction", "must be in [0, 1]")
    need(
        cfg.data.task != "jsonl" or cfg.data.path is not None,
        "data.path",
        "the jsonl task needs data.path",
    )
    _validate_eval_and_sft_data(cfg, need)
    need(
        g.reward != "reward_model" or g.reward_model_path is not None,
        "grpo.reward_model_path",
        "grpo.reward=reward_model needs a reward model directory",
    )
    _validate_preferences(cfg, src, need)


def _validate_preferences(cfg: Config, src: _Source, need: Callable[[bool, str, str], None]) -> None:
    d, r, c = cfg.dpo, cfg.rollout, cfg.compare
    need(d.beta > 0, "dpo.beta", "must be > 0")
    need(0 <= d.label_smoothing < 0.5, "dpo.label_smoothing", "must be in [0, 0.5)")
    need(d.nll_coef >= 0, "dpo.nll_coef", "must be >= 0")
    if r is not None:
        need(r.prompts_per_step > 0, "rollout.prompts_per_step", "must be > 0")
        need(r.samples_per_prompt >= 2, "rollout.samples_per_prompt", "needs at least 2 samples to form a pair")
        need(r.sync_every >= 0, "rollout.sync_every", "must be >= 0 (0 never syncs: offline)")
        need(
            r.scorer != "reward_model" or r.reward_model_path is not None,
            "rollout.reward_model_path",
            "rollout.scorer=reward_model needs a reward model directory",
        )
    need(c.seeds > 0, "compare.seeds", "must be > 0")
    need(c.sampled_responses > 0, "compare.sampled_responses", "must be > 0")
    need(c.eval_points > 0, "compare.eval_points", "must be > 0")
    for name, overlay in c.methods.items():
        where = f"compare.methods.{name}"
        recipe = overlay.get("recipe") if isinstance(overlay, dict) else None
        need(recipe in ("dpo", "grpo"), f"{where}.recipe", "each method needs recipe: dpo or recipe: grpo")
        build(Config, {k: v for k, v in overlay.items() if k != "recipe"}, where, src)  # keys and types


def apply_overlay(cfg: Config, overlay: dict[str, Any]) -> Config:
    """``cfg`` with the nested mapping ``overlay`` merged over it, checked like a config file."""
    out = build(Config, _merge(to_dict(cfg), overlay), "", _Source())
    validate(out)
    return out


def _validate_eval_and_sft_data(cfg: Config, need: Callable[[bool, str, str], None]) -> None:
    d, e, p = cfg.data, cfg.eval, cfg.predict
    need(0 < d.train_fraction <= 1, "data.train_fraction", "must be in (0, 1]")
    need(d.min_demo_tokens >= 0, "data.min_demo_tokens", "must be >= 0")
    need(d.max_demo_tokens >= 0, "data.max_demo_tokens", "must be >= 0 (0: no limit)")
    need(
        d.max_demo_tokens == 0 or d.max_demo_tokens >= d.min_demo_tokens,
        "data.max_demo_tokens",
        f"must be >= data.min_demo_tokens ({d.min_demo_tokens}) or 0",
    )
    need(cfg.train.epochs >= 0, "train.epochs", "must be >= 0 (0: train.max_steps decides)")
    need(e.chunk_size > 0, "eval.chunk_size", "must be > 0")
    need(e.check_timeout_s > 0, "eval.check_timeout_s", "must be > 0")
    need(e.check_workers > 0, "eval.check_workers", "must be > 0")
    need(
        p.large_k >= 0 and p.large_k & (p.large_k - 1) == 0,
        "predict.large_k",
        "must be a power of two, the k that pass@k is reported at (0: the largest <= eval.samples_per_problem)",
    )
    need(
        p.large_k <= e.samples_per_problem,
        "predict.large_k",
        f"must be <= eval.samples_per_problem ({e.samples_per_problem}): pass@k needs k <= n",
    )
    need(p.rl_samples_per_problem > 0, "predict.rl_samples_per_problem", "must be > 0")
