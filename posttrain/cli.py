"""The command line: parse, load the config, call a recipe. Nothing else lives here.

    posttrain run      [--config F] [--resume] [key=value ...]   SFT -> GRPO -> eval -> report
    posttrain sft      [--config F] [--resume] [key=value ...]
    posttrain grpo     [--config F] [--resume] [key=value ...]
    posttrain distill  [--config F] [--resume] model.path=STUDENT teacher.path=TEACHER [key=value ...]
    posttrain adaptive [--config F] [--resume] [key=value ...]   a temperature head by LPO, vs fixed temperatures
    posttrain eval     [--config F] [key=value ...]
    posttrain generate [--config F] [--prompt TEXT ...] [key=value ...]
    posttrain predict  [--config F] eval.models='{a: DIR, b: DIR}' [key=value ...]   rank SFT checkpoints for RL
    posttrain predict-rl --config F [--resume] [key=value ...]   SFT variants -> GRPO: which predictor was right
    posttrain dpo      [--config F] [--resume] [key=value ...]   offline; online with dpo.mode=online
    posttrain rm       [--config F] [--resume] [key=value ...]   Bradley-Terry reward model
    posttrain compare  --config F [--resume] [key=value ...]     DPO (offline..online) vs GRPO, over seeds
    posttrain merge    --adapter DIR --out DIR [--dtype D]       LoRA adapters + base -> one HF model
    posttrain judge    [--config F] [--resume] [key=value ...]   train an LLM judge with GRPO on checkable verdicts (J1)
    posttrain judge eval model.path=DIR [data.path=pairs.jsonl]  a judge's accuracy, consistency, parse failures
    posttrain judge self-taught [--config F] [key=value ...]      Self-Taught Evaluator iterations
    posttrain config show [--config F] [--stage NAME] [key=value ...]   the resolved config, as YAML
    posttrain config keys [SECTION]                               every key: default, type or choices, meaning
    posttrain data {dedup,decontaminate,prune,synth,select} [--config F] [key=value ...]   make and clean data

``--config`` takes a YAML file, or the name of an experiment shipped in the package
(``posttrain.experiments``: quickstart, compare-dpo-grpo, predict-rl); ``run`` defaults
to ``quickstart``.

Where a command writes: ``output_dir`` if set, else ``runs/<name>`` for a config with a
name of its own, else a fresh ``runs/<command>-<YYYYmmdd-HHMMSS>``, printed at start, so a
command on your own model never writes over the demo's ``runs/quickstart/``; ``posttrain run``
of the packaged quickstart is the demo and keeps ``runs/quickstart``. ``--resume`` needs to
know the run, so it wants ``output_dir`` (or ``name``) wherever the default would be fresh.

Every bad input the user controls ends in one line naming file, line and field,
and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from posttrain import experiments
from posttrain.config import STAGES
from posttrain.config import describe as schema
from posttrain.errors import ConfigError, PosttrainError

DEFAULT_EXPERIMENT = "quickstart"
FRESH_STAMP = "%Y%m%d-%H%M%S"  # runs/<command>-<stamp>: the output directory of a run given neither output_dir nor name

# The config sections each command reads, for its --help. The top-level sections (name,
# output_dir, seed, threads), model and data are read by all of them.
_COMMON = (schema.TOP, "model", "data", "logging")
_SFT = ("train", "optim", "lora", "dist")
_RL = ("train", "optim", "sampling", "rollout", "grpo", "engine", "reward", "lora", "dist")
_EVAL = ("eval", "engine", "reward")
SECTIONS_READ: dict[str, tuple[str, ...]] = {
    "sft": _SFT,
    "grpo": (*_RL, "teacher"),
    "distill": (*_RL, "teacher", "distill"),
    "eval": _EVAL,
    "generate": ("sampling", "engine", "eval", "reward"),
    "predict": (*_EVAL, "predict"),
    "dpo": ("train", "optim", "dpo", "lora", "dist", "rollout", "sampling", "engine", "reward"),  # online: rollout..
    "rm": ("train", "optim", "dist"),
    "run": (*_RL, "eval", "stages"),
    "predict-rl": (*_RL, "eval", "predict", "stages"),
    "compare": (*_RL, "dpo", "eval", "compare", "stages"),
    "judge": (*_RL, "eval", "stages"),
    "judge-eval": ("eval", "engine"),  # also `posttrain judge eval`
    "judge-self-taught": ("train", "optim", "sampling", "engine", "eval", "stages"),  # `posttrain judge self-taught`
    "adaptive": ("train", "optim", "sampling", "rollout", "adaptive", "engine", "reward", "stages"),
}
# the stage overlay (stages.<name>) a command's config is read with; the multi-stage commands read each in turn
STAGE_OF = {"sft": "sft", "grpo": "grpo", "distill": "distill", "eval": "eval", "generate": "generate", "dpo": "dpo", "rm": "rm",
            "predict": "eval"}  # fmt: skip


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


def _top_epilog() -> str:
    # The top-level help is a map: one line a section, and where the keys are. Every key (~130
    # of them) with its default in every --help would bury the commands; each command's help
    # lists the sections it reads with their keys and defaults, `config keys` adds the meanings.
    width = max(len(name) for name, _ in schema.sections())
    rows = [f"  {name:<{width}}  {summary}" for name, summary in schema.sections()]
    return "\n".join([
        "config sections (set any key as section.key=value, or in a --config YAML file):",
        *rows,
        "",
        "posttrain config keys [SECTION]   every key of a section: default, type or choices, meaning",
        "posttrain config show [--config F] [--stage NAME] [key=value ...]   the resolved config, as YAML",
        "posttrain COMMAND --help          the sections that command reads, with their keys and defaults",
    ])  # fmt: skip


def _command_epilog(command: str) -> str:
    sections = [*_COMMON, *SECTIONS_READ[command]]
    fresh = "runs/<name> for a named config" if command != "run" else "runs/quickstart for the packaged quickstart"
    return "\n".join([
        f"config sections posttrain {command} reads, as key=default "
        "(posttrain config keys SECTION: types, choices, meanings):",
        *(schema.format_compact(s) for s in sections),
        "",
        f"output: output_dir if set, else {fresh}, else a fresh runs/{command}-YYYYmmdd-HHMMSS",
    ])  # fmt: skip


def _add_config_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("config", help="print the resolved config, or every key with its default and meaning")
    csub = c.add_subparsers(dest="config_command", required=True)
    show = csub.add_parser("show", help="the resolved config as YAML (defaults, file, stage overlay, overrides)")
    show.add_argument("--config", "-c", help="a YAML file, or a packaged experiment's name; default: the defaults")
    show.add_argument("--stage", choices=STAGES, help="merge this stage's overlay (stages.NAME), as that stage runs")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
    keys = csub.add_parser("keys", help="every key: default, type or choices, meaning")
    keys.add_argument("section", nargs="?", help="a section (optim, data.arithmetic, 'top level') or one key")


def _add_data_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from posttrain.datagen.commands import SUBCOMMANDS

    raw = argparse.RawDescriptionHelpFormatter
    d = sub.add_parser("data", help="make and clean data: dedup, decontaminate, prune, synth, select")
    dsub = d.add_subparsers(dest="data_command", required=True)
    epilog = "\n".join([
        "config sections posttrain data reads, as key=default (posttrain config keys datagen: meanings):",
        *(schema.format_compact(s) for s in (schema.TOP, "datagen")),
        "synth also reads model, data (verifier), sampling (the target's answers) and engine",
        "output: output_dir if set, else runs/<name> for a named config, else a fresh runs/data-NAME-YYYYmmdd-HHMMSS",
    ])  # fmt: skip
    for name, text in SUBCOMMANDS.items():
        s = dsub.add_parser(name, help=text, description=text, epilog=epilog, formatter_class=raw)
        s.add_argument("--config", "-c", help="a YAML file, or a packaged experiment's name")
        s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. datagen.input=F")


def data_command(args: argparse.Namespace) -> int:
    """``posttrain data NAME``: one data command on the resolved config."""
    from posttrain.config import load_config
    from posttrain.recipes.data import run_data

    config = resolve_config(args.config) if args.config is not None else None
    command = f"data-{args.data_command}"
    overrides = [*args.overrides, *default_output(command, config, args.overrides, False, 1)]
    run_data(args.data_command, load_config(config, overrides))
    return 0


def parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="posttrain",
        description="Post-training for causal language models.",
        epilog=_top_epilog(),
        formatter_class=raw,
    )
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "run": "the whole pipeline: SFT, GRPO, evaluation of both, report",
        "sft": "supervised fine-tuning on demonstrations",
        "grpo": "GRPO and its variants (RLOO, REINFORCE++, GSPO, CISPO, semi-online), rewards from reward.components",
        "eval": "pass@k, maj@k, greedy accuracy and held-out loss of one or more models",
        "generate": "sample completions for prompts",
        "predict": "rank SFT checkpoints by predicted post-RL performance (held-out loss, pass@large-k)",
        "predict-rl": "train SFT variants, run the same GRPO from each, and measure which predictor was right",
        "dpo": "DPO and its variants: offline on preference pairs, online/semi-online with dpo.mode=online",
        "rm": "a Bradley-Terry reward model from preference pairs",
        "compare": "offline, semi-online and online DPO against GRPO at one sampling budget, over seeds",
        "adaptive": "adaptive decoding: a temperature head trained by LPO (LM frozen), compared with fixed temperatures",
        "distill": "on-policy distillation from teacher.path (reverse KL, GKD's JSD, teacher-sampled mix)",
        "judge": "train an LLM judge with GRPO on verdicts with a known answer (J1)",
        "judge-eval": "a judge's accuracy (both orders, per order), position consistency, parse failures (judge eval)",
        "judge-self-taught": "Self-Taught Evaluator iterations: contrasting pairs, judgments kept if right, SFT",
    }
    for name, text in helps.items():
        s = sub.add_parser(name, help=text, description=text, epilog=_command_epilog(name), formatter_class=raw)
        s.add_argument(
            "--config",
            "-c",
            help=f"a YAML file, or a packaged experiment's name ({', '.join(experiments.names())}); "
            f"run defaults to {DEFAULT_EXPERIMENT}",
        )
        s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. optim.lr=3e-4")
        if name in ("run", "sft", "grpo", "dpo", "rm", "compare", "distill", "judge"):
            s.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
        if name == "adaptive":
            s.add_argument(
                "--resume", action="store_true", help="continue the head from its last checkpoint; skip a finished SFT"
            )
        if name == "generate":
            s.add_argument("--prompt", action="append", help="a prompt (repeatable); default: test problems")
        if name == "predict-rl":
            s.add_argument("--resume", action="store_true", help="skip SFT and GRPO stages that finished")
    m = sub.add_parser("merge", help="fold LoRA adapters into their base model, written as a plain HF model")
    m.add_argument("--adapter", required=True, help="a peft adapter directory, e.g. a LoRA run's final/")
    m.add_argument("--out", required=True, help="where the merged model and tokenizer go")
    m.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    _add_config_command(sub)
    _add_data_command(sub)
    return p


DISTRIBUTED = ("sft", "dpo", "grpo")  # the commands torchrun may launch on several processes
# commands that run several stages, and the stages among them that sample
SAMPLING_STAGES = {"run": ("grpo", "eval"), "predict-rl": ("grpo", "eval"), "compare": ("dpo", "grpo", "eval"),
                   "judge": ("grpo", "eval"), "judge-eval": ("eval",),
                   "judge-self-taught": ("sft", "eval")}  # fmt: skip
SAMPLING = ("grpo", "dpo", "eval", "generate", "distill")  # one-stage commands that sample


def check_engines(config: Path | None, overrides: list[str], stages: tuple[str, ...]) -> None:
    """Refuse what each stage's engine cannot do, in one line, before any stage runs or any model loads.

    A compare method's own overlay is checked by the factory when that method starts.
    """
    from posttrain.config import load_config
    from posttrain.rollout.factory import check_engine

    for stage in stages:
        check_engine(load_config(config, overrides, stage=stage))


def fresh_output_dir(command: str) -> Path:
    """``runs/<command>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... when that exists already."""
    base = Path("runs") / f"{command}-{time.strftime(FRESH_STAMP)}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def default_output(command: str, config: Path | None, overrides: list[str], resume: bool, world: int) -> list[str]:
    """The overrides that send a run given neither ``output_dir`` nor a name of its own to a fresh directory.

    Config's own default (``runs/<name>``, name ``quickstart``) stays as it is for library callers;
    only the CLI, which knows the command, picks ``runs/<command>-<time>`` instead of the demo's
    directory. The demo itself (``posttrain run`` of the packaged quickstart) keeps ``runs/quickstart``.
    """
    from posttrain.config import load_config

    cfg = load_config(config, overrides, stage=STAGE_OF.get(command))
    if cfg.output_dir or cfg.name != DEFAULT_EXPERIMENT:
        return []
    if command == "run" and (config is None or config.resolve() == default_config().resolve()):
        return []
    if resume:
        raise ConfigError(
            f"--resume needs the run to continue: give its output_dir=DIR (or name=NAME); without either, "
            f"posttrain {command} starts a fresh runs/{command}-<time>",
            file="command line",
            field="--resume",
        )
    if world > 1:  # each process would stamp its own time: they must agree on one directory
        raise ConfigError(
            "under torchrun, give output_dir=DIR (or name=NAME): every process must write to one directory",
            file="command line",
            field="output_dir",
        )
    out = fresh_output_dir(command)
    print(f"posttrain {command}: writing to {out} (output_dir=DIR or name=NAME chooses)", file=sys.stderr)
    extra = [f"output_dir={out}"]
    if command in ("eval", "predict") and cfg.eval.cache_dir is None:
        # the sample cache is keyed by weights, problems and sampling settings, so runs can share one: a rerun
        # with a larger eval.samples_per_problem still samples only the new chunks
        extra.append("eval.cache_dir=runs/eval_cache")
    return extra


def config_command(args: argparse.Namespace) -> int:
    """``posttrain config show`` and ``posttrain config keys``: print, train nothing."""
    if args.config_command == "keys":
        docs = schema.section_keys(args.section) if args.section else list(schema.all_keys())
        print(schema.format_keys(docs))
        return 0
    from posttrain.config import load_config, to_dict

    config = resolve_config(args.config) if args.config is not None else None
    explained: list[str] = []  # the keys whose default depends on the model (posttrain.config.model_defaults)
    cfg = load_config(config, args.overrides, stage=args.stage, explain=explained)
    data = to_dict(cfg)
    source = str(config) if config is not None else "the defaults"
    header = [f"# posttrain config show: {source}" + (f", stage {args.stage}" if args.stage else "")]
    if args.stage:  # merged already: without them the output is a config of that stage alone
        data.pop("stages", None)
        header.append(f"# stages.{args.stage} is merged in and the stages mapping left out")
    if not cfg.output_dir:
        header.append("# output_dir null: runs/<name>, or a fresh runs/<command>-<time> while the name is quickstart")
    header.extend(f"# {note}" for note in explained)
    print("\n".join(header))
    print(yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True), end="")
    return 0


# posttrain.recipes.<module>:<function> of each command, imported when it runs (torch and transformers load then).
# Commands of several stages, called as fn(config file, overrides, resume=...):
STAGED_RECIPES = {"run": "pipeline:run_pipeline", "compare": "compare:run_compare", "judge": "judge:run_judge",
                  "predict-rl": "predict_rl:run_predict_rl", "adaptive": "adaptive:run_adaptive"}  # fmt: skip
# Commands of one config, read with that stage's overlay, called as fn(cfg[, resume=...]) (generate: fn(cfg, prompts));
# predict and judge-eval read a recipe's eval stage, judge-self-taught its sft stage.
RECIPES: dict[str, tuple[str, str]] = {
    "sft": ("sft:train_sft", "sft"), "grpo": ("grpo:train_grpo", "grpo"), "distill": ("distill:train_distill", "distill"),
    "dpo": ("dpo:train_dpo", "dpo"), "rm": ("rm:train_rm", "rm"), "eval": ("evaluate:run_eval", "eval"),
    "generate": ("generate:run_generate", "generate"), "predict": ("predict:run_predict", "eval"),
    "judge-eval": ("judge:run_judge_eval", "eval"), "judge-self-taught": ("judge:run_self_taught", "sft"),
}  # fmt: skip


def recipe(where: str) -> Any:
    """The function ``posttrain.recipes.<module>:<name>``, imported now."""
    module, name = where.split(":")
    return getattr(importlib.import_module(f"posttrain.recipes.{module}"), name)


def dispatch(args: argparse.Namespace) -> int:
    from posttrain.config import load_config
    from posttrain.train.distributed import launched_world

    if args.command == "config":
        return config_command(args)
    if args.command == "data":
        return data_command(args)

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
    args.overrides = [
        *args.overrides,
        *default_output(args.command, config, args.overrides, getattr(args, "resume", False), launched_world()),
    ]
    check_engines(config, args.overrides, SAMPLING_STAGES.get(args.command, ()))
    if args.command in STAGED_RECIPES:  # these load each of their stages' configs themselves
        recipe(STAGED_RECIPES[args.command])(config, args.overrides, resume=args.resume)
        return 0
    where, stage = RECIPES[args.command]
    cfg = load_config(config, args.overrides, stage=stage)
    if args.command in SAMPLING:
        from posttrain.rollout.factory import check_engine

        check_engine(cfg, distributed=launched_world() > 1)
    run = recipe(where)
    if args.command == "generate":
        run(cfg, args.prompt)
    elif hasattr(args, "resume"):
        run(cfg, resume=args.resume)
    else:
        run(cfg)
    return 0


JUDGE_ACTIONS = ("eval", "self-taught")  # `posttrain judge eval ...` is `posttrain judge-eval ...`


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["judge"] and argv[1:2] and argv[1] in JUDGE_ACTIONS:
        argv = [f"judge-{argv[1]}", *argv[2:]]
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
