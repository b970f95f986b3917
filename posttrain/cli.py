"""The command line: parse, load the config, call a recipe. Nothing else lives here.

    posttrain run      [--config F] [--resume] [key=value ...]   SFT -> GRPO -> eval -> report
    posttrain sft      [--config F] [--resume] [key=value ...]
    posttrain grpo     [--config F] [--resume] [key=value ...]
    posttrain eval     [--config F] [key=value ...]
    posttrain generate [--config F] [--prompt TEXT ...] [key=value ...]
    posttrain predict  [--config F] eval.models='{a: DIR, b: DIR}' [key=value ...]   rank SFT checkpoints for RL
    posttrain predict-rl --config F [--resume] [key=value ...]   SFT variants -> GRPO: which predictor was right
    posttrain dpo      [--config F] [--resume] [key=value ...]   offline; online with a rollout section
    posttrain rm       [--config F] [--resume] [key=value ...]   Bradley-Terry reward model
    posttrain compare  --config F [--resume] [key=value ...]     DPO (offline..online) vs GRPO, over seeds
    posttrain merge    --adapter DIR --out DIR [--dtype D]       LoRA adapters + base -> one HF model

``--config`` takes a YAML file, or the name of an experiment shipped in the package
(``posttrain.experiments``: quickstart, compare-dpo-grpo, predict-rl); ``run`` defaults
to ``quickstart``.

Every bad input the user controls ends in one line naming file, line and field,
and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from posttrain import experiments
from posttrain.errors import ConfigError, PosttrainError

DEFAULT_EXPERIMENT = "quickstart"


def default_config() -> Path:
    """The packaged quickstart, what ``posttrain run`` uses without ``--config``."""
    return experiments.path(DEFAULT_EXPERIMENT)


def resolve_config(arg: str) -> Path:
    """``--config ARG``: the YAML file ``ARG`` if there is one, else the packaged experiment of that name."""
    as_file = Path(arg)
    if as_file.is_file():
        return as_file
    known = experiments.names()
    stem = arg.removesuffix(experiments.SUFFIX)
    if stem in known:
        return experiments.path(stem)
    # e.g. the old `recipes/quickstart.yaml`: the experiments now ship inside the package
    hint = f"; did you mean --config {as_file.stem}?" if as_file.stem in known else ""
    raise ConfigError(
        f"{arg}: no such file, nor a packaged experiment of that name (packaged: {', '.join(known)}){hint}",
        file="command line",
        field="--config",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain", description="Post-training for causal language models.")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the whole pipeline: SFT, GRPO, evaluation of both, report",
        "sft": "supervised fine-tuning on demonstrations",
        "grpo": "GRPO with the task's verifier (or a reward model) as reward",
        "eval": "pass@k, maj@k, greedy accuracy and held-out loss of one or more models",
        "generate": "sample completions for prompts",
        "predict": "rank SFT checkpoints by predicted post-RL performance (held-out loss, pass@large-k)",
        "predict-rl": "train SFT variants, run the same GRPO from each, and measure which predictor was right",
        "dpo": "DPO and its variants: offline on preference pairs, online/semi-online with a rollout section",
        "rm": "a Bradley-Terry reward model from preference pairs",
        "compare": "offline, semi-online and online DPO against GRPO at one sampling budget, over seeds",
    }
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument(
            "--config",
            "-c",
            help=f"a YAML file, or a packaged experiment's name ({', '.join(experiments.names())}); "
            f"run defaults to {DEFAULT_EXPERIMENT}",
        )
        s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
        if name in ("run", "sft", "grpo", "dpo", "rm", "compare"):
            s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        if name == "generate":
            s.add_argument("--prompt", action="append", help="a prompt (repeatable); default: test problems")
        if name == "predict-rl":
            s.add_argument("--resume", action="store_true", help="skip SFT and GRPO stages that finished")
    m = sub.add_parser("merge", help="fold LoRA adapters into their base model, written as a plain HF model")
    m.add_argument("--adapter", required=True, help="a peft adapter directory, e.g. a LoRA run's final/")
    m.add_argument("--out", required=True, help="where the merged model and tokenizer go")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    return p


DISTRIBUTED = ("sft", "dpo", "grpo")  # the commands torchrun may launch on several processes
# commands that run several stages, and the stages among them that sample
SAMPLING_STAGES = {"run": ("grpo", "eval"), "predict-rl": ("grpo", "eval"), "compare": ("dpo", "grpo", "eval")}
SAMPLING = ("grpo", "dpo", "eval", "generate")  # one-stage commands that sample


def check_engines(config: Path | None, overrides: list[str], stages: tuple[str, ...]) -> None:
    """Refuse what each stage's engine cannot do, in one line, before any stage runs or any model loads.

    A compare method's own overlay is checked by the factory when that method starts.
    """
    from posttrain.config import load_config
    from posttrain.rollout.factory import check_engine

    for stage in stages:
        check_engine(load_config(config, overrides, stage=stage))


def dispatch(args: argparse.Namespace) -> int:
    from posttrain.config import load_config
    from posttrain.train.distributed import launched_world

    if launched_world() > 1 and args.command not in DISTRIBUTED:
        raise PosttrainError(
            f"posttrain {args.command} runs in one process; torchrun launches only {', '.join(DISTRIBUTED)}",
            file="command line",
        )
    if args.command == "merge":
        from posttrain.recipes.merge import run_merge

        run_merge(args.adapter, args.out, args.dtype)
        return 0
    config = resolve_config(args.config) if args.config is not None else None
    if config is None and args.command == "run":
        config = default_config()
    check_engines(config, args.overrides, SAMPLING_STAGES.get(args.command, ()))
    if args.command == "run":
        from posttrain.recipes.pipeline import run_pipeline

        run_pipeline(config, args.overrides, resume=args.resume)
        return 0
    if args.command == "compare":
        from posttrain.recipes.compare import run_compare

        run_compare(config, args.overrides, resume=args.resume)
        return 0
    if args.command == "predict-rl":
        from posttrain.recipes.predict_rl import run_predict_rl

        run_predict_rl(config, args.overrides, resume=args.resume)
        return 0
    if args.command == "predict":
        from posttrain.recipes.predict import run_predict

        # a predict-rl recipe's evaluation settings live in its eval stage
        run_predict(load_config(config, args.overrides, stage="eval"))
        return 0
    cfg = load_config(config, args.overrides, stage=args.command)
    if args.command in SAMPLING:
        from posttrain.rollout.factory import check_engine

        check_engine(cfg, distributed=launched_world() > 1)
    if args.command == "sft":
        from posttrain.recipes.sft import train_sft

        train_sft(cfg, resume=args.resume)
    elif args.command == "grpo":
        from posttrain.recipes.grpo import train_grpo

        train_grpo(cfg, resume=args.resume)
    elif args.command == "eval":
        from posttrain.recipes.evaluate import run_eval

        run_eval(cfg)
    elif args.command == "generate":
        from posttrain.recipes.generate import run_generate

        run_generate(cfg, args.prompt)
    elif args.command == "dpo":
        from posttrain.recipes.dpo import train_dpo

        train_dpo(cfg, resume=args.resume)
    elif args.command == "rm":
        from posttrain.recipes.rm import train_rm

        train_rm(cfg, resume=args.resume)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return dispatch(args)
    except PosttrainError as e:
        rank = os.environ.get("RANK", "0")
        if rank == "0":
            print(f"posttrain: error: {e.render()}", file=sys.stderr)
        elif not isinstance(e, ConfigError):  # config errors hit every rank alike; data errors may hit one share
            print(f"posttrain: error: [rank {rank}] {e.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posttrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
