"""The configuration schema: one frozen dataclass per section, defaults in code.

``posttrain.config`` loads YAML files and dotted overrides into these and checks
them; every section is re-exported from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from posttrain.config.reward import RewardConfig

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
    # a Hugging Face causal LM directory, a .gguf file, pkg:<package> holding one, or a Hub id; None: the tiny model
    path: str | None = None
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
    # string prompts through the chat template, as a user turn (auto: when the tokenizer brings a template of
    # its own; the built-in tiny tokenizer's minimal one does not count); see posttrain/tasks/prompting.py
    chat_template: Literal["auto", "on", "off"] = "auto"
    system_prompt: str | None = None  # a system turn before every prompt (raw text mode: a paragraph before it)
    prompt_template: str | None = None  # string prompts rewritten, e.g. "{question}\nAnswer with a number."
    # SFT on {messages} rows: every assistant turn is a target, or only the last (earlier ones are context)
    train_on: Literal["all_assistant", "last_assistant"] = "all_assistant"
    # a row longer than train.max_seq_len (or the model's context, when shorter): skipped and counted in the
    # summary (drop), one-line error (error), prompt's start cut (left), completion's end cut, eos and all
    # (right); an RL or evaluation prompt with no room for max_new_tokens: error, or skipped in every other mode
    truncation: Literal["error", "left", "right", "drop"] = "drop"


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = (
        100  # optimiser steps (SFT, offline DPO, rm) or iterations, one sampled batch each (GRPO, online DPO)
    )
    batch_size: int = 64  # sequences per optimiser step (SFT)
    micro_batch_size: int = 64  # sequences per forward/backward pass
    max_seq_len: int = 128
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    save_every: int = 0  # steps between checkpoints; 0 saves only at the end
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 autocast over fp32 weights
    epochs: float = 0.0  # SFT: > 0 sets max_steps to this many passes over the demonstrations
    # SFT, GRPO: lay short sequences end to end in rows of the longest one's length instead of padding
    packing: bool = False
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute


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
    """How samples are drawn: training rollouts (``sampling``) and evaluation (``eval.sampling``)."""

    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    max_new_tokens: int = 64


@dataclass(frozen=True)
class RolloutConfig:
    """What one RL iteration samples, and how stale its sampler and reference may be (GRPO, online DPO).

    An iteration draws ``prompts_per_step`` prompts and samples ``samples_per_prompt``
    completions of each; GRPO then takes ``grpo.minibatches`` x ``grpo.updates_per_batch``
    optimiser steps on them, online DPO one. Counts are global: under torchrun each rank
    samples its share of the prompts.
    """

    prompts_per_step: int = 16  # prompts drawn per iteration, over all ranks
    samples_per_prompt: int = 8  # completions per prompt: the group (GRPO) or the pool pairs come from (DPO)
    # iterations between syncs of the sampler's weights from the trainer: 1 on-policy, s > 1 semi-online,
    # 0 never (offline: the initial policy's samples, drawn as training goes)
    sync_every: int = 1
    # iterations between syncs of the reference (DPO's reference, GRPO's KL target): 0 keeps the initial policy
    ref_sync_every: int = 0


@dataclass(frozen=True)
class EngineConfig:
    """Who samples: the in-process batched sampler, Ray actors, or vLLM beside the trainer on one GPU."""

    # torch: this process; ray: `workers` actors each holding a copy of the policy;
    # vllm: colocated with the trainer on one GPU (pip install 'posttrain[vllm]')
    backend: Literal["torch", "ray", "vllm"] = "torch"
    batch_size: int = 256  # sequences per generation batch (torch and ray engines), for training and evaluation
    workers: int = 2  # ray: rollout actors
    sync_timeout_s: float = 120.0  # ray: a weight sync to the actors slower than this is an error
    generate_timeout_s: float = 600.0  # ray: one generate() call slower than this is an error
    address: str | None = None  # ray: an existing cluster ("auto", "ray://host:10001"); None starts a local one
    gpu_memory_utilization: float = 0.3  # vllm: share of the GPU's memory vLLM may take (weights + KV cache)
    enforce_eager: bool = False  # vllm: skip torch.compile and CUDA graphs (faster start, slower decode)


@dataclass(frozen=True)
class GRPOConfig:
    """The update of `posttrain grpo` (``posttrain.algorithms.grpo``, ``posttrain.algorithms.advantages``)."""

    updates_per_batch: int = 1  # passes over each iteration's rollouts
    minibatches: int = 1  # optimiser steps per pass, each over whole groups
    # grpo: group mean and std; dr_grpo: group mean only; rloo: leave-one-out mean;
    # reinforce_pp: batch mean and std; reinforce_pp_baseline: group mean, then batch std
    advantage: Literal["grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"] = "grpo"
    policy_loss: Literal["ppo_clip", "gspo", "cispo"] = "ppo_clip"  # token-level clip, GSPO's sequence ratio, CISPO
    clip_low: float = 0.2
    clip_high: float = 0.28
    gspo_clip_low: float = 3e-4  # gspo: the sequence-level ratio's clip range (the paper's order of magnitude)
    gspo_clip_high: float = 4e-4
    loss_agg: Literal["token_mean", "seq_mean", "constant"] = "token_mean"
    kl_coef: float = 0.0
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # as a loss: k2's gradient is reverse KL's, k3's forward KL's
    kl_in: Literal["loss", "reward"] = "loss"  # a KL term in the loss, or k1 per sequence subtracted from the reward
    entropy_coef: float = 0.0  # entropy bonus: loss -= entropy_coef * token entropy
    drop_uniform_groups: bool = True
    overlong: Literal["mask", "penalty", "none"] = "mask"
    overlong_reward: float = 0.0  # reward given to truncated completions with overlong=penalty


@dataclass(frozen=True)
class DPOConfig:
    """`posttrain dpo`: the preference loss (``posttrain.algorithms.dpo``) and where the pairs come from."""

    mode: Literal["offline", "online"] = "offline"  # offline: pairs from data.path; online: the policy samples them
    pairs: Literal["random", "best_worst", "group"] = "random"  # online: posttrain.algorithms.pairs
    loss: Literal["sigmoid", "cdpo", "ipo", "simpo", "rpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0  # cdpo: assumed share of flipped preference labels, in [0, 0.5)
    simpo_gamma: float = 0.5  # simpo: target reward margin gamma
    nll_coef: float = 1.0  # rpo: weight of the chosen response's per-token NLL
    cache_reference: bool = True  # offline: reference logprobs computed once, cached on disk
    cache_dir: str | None = None  # where the cache lives; default output_dir/ref_cache


@dataclass(frozen=True)
class DistConfig:
    """Multi-process training, used when launched by torchrun (WORLD_SIZE > 1)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"  # replicate the model, or shard it with FSDP2 fully_shard
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl on CUDA, gloo on CPU
    checkpoint: Literal["gathered", "sharded"] = "gathered"  # one HF directory, or torch.distributed.checkpoint shards
    timeout_s: float = 600.0  # a collective that waits longer than this fails instead of hanging


@dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters through peft; setting this section trains adapters only."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str = "all-linear"  # comma-separated module names, or all-linear
    quantize: Literal["none", "4bit"] = "none"  # 4bit: QLoRA, the frozen base in NF4 (CUDA + bitsandbytes)


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
    """`posttrain eval`: pass@k, maj@k, greedy accuracy and held-out loss on test problems.

    The engine (``engine``) and the answer checks' deadline pool (``reward.workers``,
    ``reward.timeout_s``) are the ones training uses.
    """

    num_problems: int = 0  # test problems; 0: every one of a file (200 of the built-in generated task)
    samples_per_problem: int = 16
    sampling: SamplingConfig = field(default_factory=SamplingConfig)  # how evaluation samples are drawn
    heldout_demos: int = 200  # demonstrations for held-out NLL; 0 skips it
    models: dict[str, str] = field(default_factory=dict)  # name -> directory (posttrain eval)
    # samples are drawn in seeded chunks of this many per problem, so a larger n reuses the cached ones
    chunk_size: int = 8
    cache: bool = True  # reuse samples and scores cached by (weights hash, problems, sampling settings)
    cache_dir: str | None = None  # default: output_dir/eval_cache


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
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    lora: LoraConfig | None = None  # set: train low-rank adapters instead of every weight
    compare: CompareConfig = field(default_factory=CompareConfig)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.output_dir if self.output_dir else f"runs/{self.name}")
