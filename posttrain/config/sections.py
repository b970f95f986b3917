"""The configuration schema: one frozen dataclass per section, defaults in code.

``posttrain.config`` loads YAML files and dotted overrides into these and checks
them; every section is re-exported from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from posttrain.config.reward import RewardConfig

STAGES = ("sft", "grpo", "eval", "generate", "dpo", "rm", "compare", "distill", "adaptive")


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
class JudgeTaskConfig:
    """``data.task: judge``: verdict prompts with a known right verdict, to train a judge (tasks/judging.py)."""

    # arithmetic: a worked solution of the built-in task against a corrupted one; preferences: the
    # {prompt, chosen, rejected} rows of data.path (data.eval_path held out); sampled: a correct and an incorrect
    # sample of each problem of a verifiable task (the arithmetic task, or data.path as data.task=jsonl reads it)
    # drawn from sample_from by `posttrain judge`
    source: Literal["arithmetic", "preferences", "sampled"] = "arithmetic"
    sample_from: str | None = None  # sampled: the model (directory) whose samples make the pairs
    samples_per_problem: int = 8  # sampled: samples drawn per problem, at the sampling section's settings
    problems: int = 256  # sampled: training problems sampled (held out: eval.num_problems, or 200)
    # `posttrain judge self-taught` (Self-Taught Evaluator): iterations of sample -> keep right verdicts -> SFT
    ste_iterations: int = 2
    ste_instructions: int = 128  # instructions per iteration: arithmetic problems, or {prompt} rows of data.path
    ste_judgments: int = 4  # judgments sampled per judge prompt (each pair in both orders)
    ste_generator: str | None = None  # data.path instructions: the model writing x' and the responses; None: judge
    mode: Literal["pairwise", "pointwise"] = "pairwise"  # pick [[A]]/[[B]], or score each response 0-10 as [[n]]
    template: str = "j1"  # j1 (think, then the verdict), short (compact, for the tiny model's context), or a file
    # both_orders: sample j earns 1 only when it and sample j of the pair's other order (pairwise) or other
    # response (pointwise: chosen scored above rejected) are both right; per_order: each verdict on its own
    reward: Literal["both_orders", "per_order"] = "both_orders"
    corrupt: Literal["answer", "step", "mixed"] = "mixed"  # arithmetic: the wrong solution's answer, a step, or either
    demo: Literal["random", "correct"] = "random"  # SFT targets: a random verdict (format warm-up) or the right one


@dataclass(frozen=True)
class TaskConfig:
    """One task of a multi-task RL run (``data.tasks``): its data, its reward, its sampling weight."""

    name: str  # the metrics' task/<name>/...; letters, digits, _ and -
    task: Literal["arithmetic", "jsonl"] = "arithmetic"
    path: str | None = None  # jsonl: JSONL, Parquet or a datasets directory
    eval_path: str | None = None  # jsonl: held-out file; default splits `path`
    format: Literal["plain", "gsm8k", "math", "mc"] = "plain"  # jsonl: the row shape, as data.format
    verifier: Literal["auto", "exact", "last_number", "math_verify", "choice"] = "auto"  # as data.verifier
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)  # arithmetic: difficulty
    weight: float = 1.0  # share of each iteration's prompts drawn from this task (normalised over tasks)
    reward: RewardConfig | None = None  # this task's reward section; None: the run's `reward`


@dataclass(frozen=True)
class UCBConfig:
    """``data.curriculum: ucb``: DUMP's bandit over ``data.tasks`` (Wang et al. 2025, arXiv 2504.09710)."""

    c: float = 1.0  # exploration: score = mean |advantage| + c * sqrt(2 ln N / n_task)
    window: int = 256  # recent samples per task whose mean |advantage| is its learnability
    temperature: float = 0.1  # the mix is softmax(score / temperature) over tasks
    min_weight: float = 0.0  # floor of each task's share (then renormalised), so no task is starved


@dataclass(frozen=True)
class AggregationConfig:
    """``data.task: aggregation``: an aggregator reads a problem and m candidate solutions (AggLM; tasks/aggregation.py)."""

    base: Literal["arithmetic", "jsonl"] = "arithmetic"  # the verifiable task whose problems are aggregated
    candidates_from: str | None = None  # the model directory that samples the candidate solutions (required)
    num_candidates: int = 4  # m: candidate solutions per problem
    temperature: float = 1.0  # sampling temperature of the candidates
    max_new_tokens: int = 64  # tokens per candidate
    seed: int = 0  # the candidates' sampling seed
    batch_size: int = 256  # sequences per generation batch when drawing candidates
    num_train_problems: int = 256  # base training problems drawn once (then mixed) for the training pool
    easy_kept: float = 0.5  # share of easy problems (majority vote right) kept beside all hard ones (the paper's half)
    hard_fraction: float = 0.0  # > 0: keep as many easy problems as make hard ones this share of the mix instead
    instruction: str = "Check the solutions and write the correct one."  # after the numbered candidates
    cache_dir: str | None = None  # where candidates are cached; default: <candidates_from>/aggregation_cache
    reward_model: str | None = None  # posttrain eval: a reward model directory for the best-of-m baseline


@dataclass(frozen=True)
class MixedDecodingConfig:
    """``data.task: mixed_decoding``: arithmetic prompts that reward exactness beside ones that reward variety."""

    variety_fraction: float = 0.5  # share of prompts that ask for a number not in a list (the rest: data.arithmetic)
    list_size: int = 4  # numbers listed in a variety prompt
    max_number: int = 50  # variety prompts: numbers are drawn from [0, max_number)


@dataclass(frozen=True)
class AdaptiveConfig:
    """`posttrain adaptive`: adaptive decoding, a temperature head trained by LPO with the LM frozen.

    After "Adaptive Decoding via Latent Preference Optimization" (Dhuliawala et al. 2024);
    see posttrain/models/temperature_head.py and posttrain/algorithms/lpo.py.
    """

    temperatures: list[float] = field(default_factory=lambda: [0.0, 0.4, 0.8, 1.2])  # the head's choices; 0: greedy
    level: Literal["example", "token"] = "example"  # one temperature per response (from the prompt) or per token
    width: int = 64  # the head's hidden layer on the LM's last hidden state; 0: one linear layer
    beta: float = 1.0  # LPO's beta: the scale of the choice log-probability margin
    eval_choice: Literal["argmax", "sample"] = "argmax"  # the comparison: the head's most likely temperature, or a draw
    eval_prompts: int = 32  # the comparison: held-out prompts of each kind (mixed_decoding: exact, variety)
    eval_samples: int = 8  # the comparison: samples per prompt (a variety prompt's group)


@dataclass(frozen=True)
class LengthInstructionsConfig:
    """LIFT length instructions (Yuan et al. 2024) in preference pairs, demonstrations and prompts (tasks/length.py)."""

    enabled: bool = False  # put a length instruction before prompts (offline DPO: add instructed pairs)
    template: str = "Answer the following instruction using <MAX_LEN> words or less."  # the paper's
    fraction: float = 1.0  # offline DPO: share of the pairs that get a length-instructed copy
    keep_original: bool = True  # offline DPO: keep the uninstructed pairs beside the instructed copies
    max_words: int = 20  # the limit of test prompts (evaluation) and of prompts without a demonstration


@dataclass(frozen=True)
class DataConfig:
    task: Literal["arithmetic", "jsonl", "judge", "aggregation", "mixed_decoding"] = "arithmetic"
    path: str | None = None  # jsonl task: JSONL, Parquet or a datasets directory
    eval_path: str | None = None  # jsonl task: held-out file; default splits `path`
    # without eval_path (or a test split in `path`): the share of its prompts held out, by a stable hash of each;
    # 0 trains on every row and skips the held-out pass (dpo, rm); a jsonl task's evaluation then needs eval_path
    heldout_fraction: float = 0.1
    # jsonl task: the row shape, and the answer checker (auto: plain, gsm8k -> last_number,
    # math -> math_verify, mc -> choice); see posttrain/tasks/formats.py
    format: Literal["plain", "gsm8k", "math", "mc"] = "plain"
    verifier: Literal["auto", "exact", "last_number", "math_verify", "choice"] = "auto"
    num_train: int = 20000  # demonstrations generated for SFT (arithmetic task)
    arithmetic: ArithmeticConfig = field(default_factory=ArithmeticConfig)
    judge: JudgeTaskConfig = field(default_factory=JudgeTaskConfig)  # data.task=judge: the verdict task
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)  # data.task=aggregation (AggLM)
    length_instructions: LengthInstructionsConfig = field(default_factory=LengthInstructionsConfig)  # LIFT
    mixed_decoding: MixedDecodingConfig = field(default_factory=MixedDecodingConfig)  # data.task=mixed_decoding
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
    # multi-task RL (grpo, online dpo, eval): several tasks in one run, each prompt drawn from a task by its
    # weight and scored by that task's reward; set, it replaces data.task/path/format/verifier/arithmetic
    tasks: list[TaskConfig] = field(default_factory=list)
    curriculum: Literal["fixed", "ucb"] = "fixed"  # over data.tasks: their weights, or DUMP's UCB bandit (data.ucb)
    ucb: UCBConfig = field(default_factory=UCBConfig)  # data.curriculum=ucb: its settings


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
    keep_checkpoints: int = 2  # checkpoints/step_* kept (the newest); older ones are deleted after each save
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 autocast over fp32 weights
    epochs: float = 0.0  # SFT: > 0 sets max_steps to this many passes over the demonstrations
    # SFT, rm, distillation: lay short sequences end to end in rows of the longest one's length, not padded;
    # DPO and GRPO: a prompt's responses in one row, the prompt computed once (docs/speed.md)
    packing: bool = False
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~1/3 more compute
    # tokens per block of the LM head and log-softmax in every loss, reference and held-out NLL pass, so
    # no (batch, tokens, vocab) logits exist at once (docs/speed.md); 0: the full logits, as before
    logits_chunk: int = 0


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
    # posttrain eval / generate only: sample at the picks of the temperature head saved beside the model
    # (posttrain adaptive): off, sample (draw each pick), argmax (its likeliest); torch engine; temperature unused
    adaptive: Literal["off", "sample", "argmax"] = "off"


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
    # optimiser iterations a batch's sampler may lag the trainer: 0 samples after each sync (synchronous);
    # k >= 1 samples iteration i+1 on a producer thread while i trains (needs sync_every=1; rollout/overlap.py)
    max_staleness: int = 0


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
    # torch: the sampler's weights; bfloat16 samples from a bf16 copy while training stays fp32, and GRPO then
    # recomputes old_logprobs with the trainer (docs/speed.md); auto: the trainer's own weights
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # torch, on a CPU: the Llama-family decoder's linear layers through oneDNN on weights packed
    # once per update (q/k/v and gate/up fused), instead of MKL; a real model's default (docs/speed.md)
    packed_linears: bool = False


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
    # KDRL (Xu et al. 2025), CHORD, LUFFY, Prefix-RFT: teacher and expert terms (posttrain.recipes.distill)
    kd_coef: float = 0.0  # KDRL: weight of a KL estimate to teacher.path on the sampled tokens; 0: off
    kd_schedule: Literal["constant", "linear"] = "constant"  # linear: kd_coef decays to 0 by the last iteration
    kd_estimator: Literal["k1", "k2", "k3"] = "k2"  # of KL(student || teacher) per token; k2's gradient is its own
    kd_mask: Literal["none", "incorrect"] = "none"  # incorrect: KD only on samples whose reward < kd_mask_threshold
    kd_mask_threshold: float = 1.0  # kd_mask=incorrect: the reward below which a sample is wrong
    sft_coef: float = 0.0  # CHORD's mu: (1 - mu) RL loss + mu SFT loss on the prompts' demonstrations; 0: off
    sft_coef_end: float = 0.0  # mu at the last iteration with sft_schedule=linear
    sft_schedule: Literal["constant", "linear"] = "constant"  # linear: mu from sft_coef to sft_coef_end
    sft_phi: bool = False  # CHORD-phi: weight each demonstration token's NLL by p * (1 - p)
    luffy: bool = False  # LUFFY: each group's last sample is the prompt's demonstration, with a shaped weight
    luffy_gamma: float = 0.1  # LUFFY's shaping f(p) = p / (p + gamma) in place of the clipped ratio
    prefix_samples: int = 0  # Prefix-RFT: samples of each group that continue a demonstration's prefix; 0: off
    prefix_ratio: float = 0.5  # share of the demonstration's tokens given as the prefix


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher of `posttrain distill` and of KDRL (``grpo.kd_coef``): a causal LM with the student's tokenizer."""

    path: str | None = None  # a causal LM directory (e.g. a run's final/); needed by distill and grpo.kd_coef > 0
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"  # auto: the student's device
    # who scores (posttrain.train.teacher): local: a forward pass in the trainer's process; ray: one Ray actor
    # (engine.address, engine.generate_timeout_s); vllm: vLLM's prompt logprobs on this GPU, the sampled
    # tokens' logprobs only (distill.loss=sampled, grpo.kd_coef)
    backend: Literal["local", "ray", "vllm"] = "local"
    gpu_memory_utilization: float = 0.2  # vllm: share of the GPU's memory the teacher's vLLM may take


@dataclass(frozen=True)
class DistillConfig:
    """`posttrain distill`: on-policy distillation (GKD, Agarwal et al. 2024) on the shared RL loop."""

    # reverse_kl: KL(student || teacher) over the vocabulary; jsd: GKD's JSD(beta); sampled: the sampled
    # tokens' log-ratio as a per-token advantage (only the teacher's logprobs of the sampled tokens are read)
    loss: Literal["reverse_kl", "jsd", "sampled"] = "reverse_kl"
    beta: float = 0.5  # jsd: 0 is the forward KL(teacher || student), 1 the reverse KL
    on_policy_frac: float = 1.0  # GKD's lambda: share of iterations the student samples; the teacher samples the rest


@dataclass(frozen=True)
class DPOConfig:
    """`posttrain dpo`: the preference loss (``posttrain.algorithms.dpo``) and where the pairs come from."""

    mode: Literal["offline", "online"] = "offline"  # offline: pairs from data.path; online: the policy samples them
    pairs: Literal["random", "best_worst", "group", "divpo"] = "random"  # online: posttrain.algorithms.pairs
    # divpo: how a response's diversity is measured: minus its mean logprob under the policy, the rarity of
    # its words in the pool, its mean cosine distance to the others as bags of 1-2-grams (ngram) or as
    # mean-pooled last hidden states (embedding); posttrain/eval/diversity.py, eval/embedding_diversity.py
    divpo_criterion: Literal["logprob", "word_frequency", "ngram", "embedding"] = "logprob"
    # divpo_criterion=embedding: the model that embeds (a directory); None: the policy being trained
    divpo_embedding_model: str | None = None
    # divpo: the quality split: reward above / at-or-below divpo_threshold (absolute), or the top and bottom
    # divpo_threshold share of each pool by reward (quantile, in (0, 0.5])
    divpo_split: Literal["absolute", "quantile"] = "absolute"
    divpo_threshold: float = 0.5  # divpo: the reward threshold (absolute) or the share on each side (quantile)
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
class DedupConfig:
    """`posttrain data dedup`: exact (normalised text hash), then near duplicates (MinHash LSH, datasketch)."""

    near: bool = True  # also drop near duplicates; False: exact duplicates only
    threshold: float = 0.8  # estimated Jaccard similarity of word shingles at which a row is a near duplicate
    num_perm: int = 128  # MinHash permutations: more is a finer Jaccard estimate, slower
    shingle_words: int = 5  # words per shingle (set element) of the MinHash


@dataclass(frozen=True)
class DecontaminateConfig:
    """`posttrain data decontaminate`: drop training rows sharing an n-gram with an evaluation row."""

    eval_paths: list[str] = field(default_factory=list)  # evaluation files (JSONL or Parquet) to protect
    ngram: int = 13  # words per n-gram (GPT-3's 13-gram rule; TULU 3 reports 8)
    eval_fields: str = "auto"  # the eval rows' compared fields, as datagen.fields; auto: the question-like field


@dataclass(frozen=True)
class PruneConfig:
    """`posttrain data prune`: Sharma et al. 2024's line heuristics and document quality score."""

    fraction: float = 0.2  # share of rows with the lowest document scores removed
    min_score: float = 0.0  # also remove rows scoring below this (0..1); 0: the fraction alone decides
    # equal: every line filter weighs 1; perplexity: w_i = max(0, (PPL_all - PPL_i) / PPL_all) from prune.model
    weights: Literal["equal", "perplexity"] = "equal"
    model: str | None = None  # weights=perplexity: a causal LM directory; None: model.path (or the tiny model)
    min_words: int = 3  # the line filter min_words: a line needs at least this many words


@dataclass(frozen=True)
class SynthConfig:
    """`posttrain data synth`: CoT-Self-Instruct (Yu et al. 2025) from a seed file, filtered."""

    num_prompts: int = 64  # generation prompts written (each asks for one new task)
    seeds_per_prompt: int = 2  # k seed tasks shown in each generation prompt
    kind: Literal["verifiable", "instruction"] = "verifiable"  # a task with an answer, or an open instruction
    # answer_consistency: majority of K target answers == the generated one (verifiable); rip: lowest of K
    # reward-model scores >= rip_threshold (instruction); none: keep every parsed task
    filter: Literal["auto", "answer_consistency", "rip", "none"] = "auto"
    answers: int = 4  # K: target-model answers (answer_consistency) or responses scored (rip) per task
    reward_model: str | None = None  # rip: a reward model directory written by `posttrain rm`
    rip_threshold: float = 0.0  # rip: keep a task when its lowest-scored response scores at least this
    # rip: also drop a task whose best and worst scores differ by more than this (RIP's reward gap); None: off
    rip_max_gap: float | None = None
    # the model that answers each new task (answer_consistency) or writes the scored responses (rip):
    # a model directory; None: the generator (model.path)
    target_model: str | None = None
    shard_size: int = 16  # generation prompts per output shard (shard-00000.jsonl, ...): the unit of resume
    max_shards: int = 0  # stop after writing this many shards (a later run resumes); 0: no limit
    # how the generator samples its reasoning and new task (the target's answers use `sampling`)
    gen_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.8, max_new_tokens=256))


@dataclass(frozen=True)
class SelectConfig:
    """`posttrain data select`: NaturalThoughts (Li et al. 2025) selection of teacher traces."""

    num: int = 100  # traces selected
    # random; longest/shortest trace; difficulty: models disagree or a difficulty field; diversity: strategies
    method: Literal["random", "longest", "shortest", "difficulty", "diversity"] = "random"
    difficulty_field: str | None = None  # difficulty: rank by this numeric field (higher first) instead of disagreement
    second_answer_field: str = "second_answer"  # difficulty: the second model's answer, compared with the teacher's
    diversity: Literal["keywords", "ngram_clusters"] = "keywords"  # how strategies are found: tags or k-means
    clusters: int = 8  # diversity=ngram_clusters: k of k-means over word n-gram vectors


@dataclass(frozen=True)
class DatagenConfig:
    """`posttrain data`: dedup, decontaminate, prune, synth, select (``posttrain.datagen``)."""

    input: str | None = None  # the rows to filter, synth's seed tasks, or select's pool (JSONL or Parquet)
    output_format: Literal["jsonl", "parquet"] = "jsonl"  # kept rows: output_dir/kept.jsonl or kept.parquet
    # the fields whose text is compared and scored, comma-separated; auto: the first of prompt, question,
    # problem, messages (all turns' contents), text, instruction
    fields: str = "auto"
    backend: Literal["local", "ray"] = "local"  # local: this process; ray: Ray Data with datagen.workers actors
    workers: int = 2  # ray: actors in each map pool
    batch_size: int = 64  # ray: rows per map batch
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    synth: SynthConfig = field(default_factory=SynthConfig)
    select: SelectConfig = field(default_factory=SelectConfig)


@dataclass(frozen=True)
class LoggingConfig:
    """Where training metrics go beside ``metrics.jsonl``, and how progress is shown (``posttrain.train.metrics``)."""

    tensorboard: bool = False  # also write every metrics record as TensorBoard scalars, in tensorboard/ beside it
    wandb: str | None = None  # a W&B project: also log every record there (pip install 'posttrain[wandb]')
    # stderr not a terminal (CI logs, Slurm): a plain progress line at most this often, and at the end
    plain_every_s: float = 30.0


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
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # distill, grpo.kd_coef
    distill: DistillConfig = field(default_factory=DistillConfig)
    datagen: DatagenConfig = field(default_factory=DatagenConfig)  # `posttrain data`: synthesis, selection, filters
    adaptive: AdaptiveConfig = field(default_factory=AdaptiveConfig)  # `posttrain adaptive`: a temperature head, LPO
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def out(self) -> Path:
        return Path(self.output_dir if self.output_dir else f"runs/{self.name}")
