"""The command line: parse, load the config, call a recipe. Nothing else lives here.

    posttrain run      [--config F] [--resume] [key=value ...]   SFT -> GRPO -> eval -> report
    posttrain sft      [--config F] [--resume] [key=value ...]
    posttrain grpo     [--config F] [--resume] [key=value ...]
    posttrain eval     [--config F] [key=value ...]
    posttrain generate [--config F] [--prompt TEXT ...] [key=value ...]

Every bad input the user controls ends in one line naming file, line and field,
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from posttrain.errors import PosttrainError

QUICKSTART = "recipes/quickstart.yaml"


def default_config() -> Path:
    """``recipes/quickstart.yaml`` of the working directory, else the copy in the package."""
    local = Path(QUICKSTART)
    if local.is_file():
        return local
    return Path(str(resources.files("posttrain.recipes") / "quickstart.yaml"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posttrain", description="Post-training for causal language models.")
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the whole pipeline: SFT, GRPO, evaluation of both, report",
        "sft": "supervised fine-tuning on demonstrations",
        "grpo": "GRPO with the task's verifier as reward",
        "eval": "pass@k, maj@k, greedy accuracy and held-out loss of one or more models",
        "generate": "sample completions for prompts",
    }
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--config", "-c", help="YAML config (default for run: recipes/quickstart.yaml)")
        s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
        if name in ("run", "sft", "grpo"):
            s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        if name == "generate":
            s.add_argument("--prompt", action="append", help="a prompt (repeatable); default: test problems")
    return p


def dispatch(args: argparse.Namespace) -> int:
    from posttrain.config import load_config

    config = args.config
    if config is None and args.command == "run":
        config = default_config()
    if args.command == "run":
        from posttrain.recipes.pipeline import run_pipeline

        run_pipeline(config, args.overrides, resume=args.resume)
        return 0
    cfg = load_config(config, args.overrides, stage=args.command)
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
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return dispatch(args)
    except PosttrainError as e:
        print(f"posttrain: error: {e.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("posttrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
