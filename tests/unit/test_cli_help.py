"""The CLI's discoverability and output directories: help generated from the schema,
``posttrain config show/keys``, and the default output directory of each command."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from posttrain import cli
from posttrain.config import Config, LoraConfig, describe, load_config, to_dict
from posttrain.errors import ConfigError


def help_of(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


# --- the key list, read from the dataclasses and their comments


def test_every_field_of_the_schema_is_listed_once_with_its_default() -> None:
    docs = {d.key: d for d in describe.all_keys()}
    assert len(docs) == len(describe.all_keys())

    def leaves(obj: object, prefix: str) -> list[str]:
        out = []
        for f in dataclasses.fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                out += leaves(value, f"{prefix}{f.name}.")
            else:
                out.append(f"{prefix}{f.name}")
        return out

    assert set(leaves(Config(lora=LoraConfig()), "")) <= set(docs)
    assert docs["optim.lr"].default == "0.001" and docs["optim.lr"].type == "float"
    assert docs["model.path"].default == "null" and docs["model.path"].type == "str or null"
    assert docs["grpo.drop_uniform_groups"].default == "true"
    assert docs["reward.components"].default == "[{kind: verifier}]"
    assert docs["reward.components[].kind"].default == "(required)"
    assert docs["lora.r"].default == "16"  # an off-by-default section shows its class's defaults


def test_descriptions_are_the_comments_on_the_fields_lines() -> None:
    docs = {d.key: d for d in describe.all_keys()}
    # trailing comment
    assert docs["train.micro_batch_size"].description == "sequences per forward/backward pass"
    # a comment block above the field, spread over two lines, when there is none on its line
    assert docs["data.format"].description.startswith("jsonl task: the row shape, and the answer checker (auto:")
    assert docs["rollout.sync_every"].description.endswith("drawn as training goes)")
    # a field with neither has no description rather than its neighbour's
    assert docs["optim.lr"].description == ""
    assert docs["data.verifier"].description == ""
    # units: a _s key says seconds
    assert docs["reward.timeout_s"].description.startswith("seconds; per call")
    assert (
        docs["dist.timeout_s"].description
        == "seconds; a collective that waits longer than this fails instead of hanging"
    )


def test_choices_come_from_the_literal_types() -> None:
    docs = {d.key: d for d in describe.all_keys()}
    assert docs["grpo.advantage"].choices == ("grpo", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline")
    assert docs["train.mixed_precision"].choices == ("no", "bf16")
    assert docs["optim.lr"].choices == ()


def test_missing_source_leaves_descriptions_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte-code-only install: no comments, but every key, type and default still there."""

    def no_source(obj: object) -> str:
        raise OSError("could not get source code")

    monkeypatch.setattr(describe.inspect, "getsource", no_source)
    docs = list(describe._walk(Config, "", None))
    assert len(docs) == len(describe.all_keys()) and all(d.description in ("", "seconds") for d in docs)


def test_a_directive_comment_is_not_a_description() -> None:
    @dataclasses.dataclass
    class Demo:
        a: int = 1  # fmt: skip
        # the b knob
        b: int = 2
        c: int = 3  # steps per thing

    notes = describe._comments(Demo)
    assert notes == {"a": "", "b": "the b knob", "c": "steps per thing"}


# --- help


def test_top_level_help_lists_the_sections_and_points_to_config_keys(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of([], capsys)
    for name, _ in describe.sections():
        assert re.search(rf"^  {re.escape(name)}\s", out, re.M), name
    assert "posttrain config keys [SECTION]" in out and "posttrain config show" in out
    assert "optim.lr" not in out  # the keys themselves are in each command's help and `config keys`


@pytest.mark.parametrize("command", sorted(cli.SECTIONS_READ))
def test_each_command_help_lists_the_sections_it_reads(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of([command], capsys)
    read = [*cli._COMMON, *cli.SECTIONS_READ[command]]
    listed = re.findall(r"^  ([a-z][a-z ]*?): ", out.split("config sections", 1)[1], re.M)
    assert listed == read
    assert f"runs/{command}-YYYYmmdd-HHMMSS" in out


def test_sft_help_shows_keys_with_defaults_and_leaves_out_what_sft_does_not_read(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = help_of(["sft"], capsys)
    assert "lr=0.001" in out and "max_steps=100" in out and "micro_batch_size=64" in out
    assert "grpo:" not in out and "kl_coef" not in out


def test_every_section_a_command_reads_exists() -> None:
    names = {name for name, _ in describe.sections()}
    for command, read in cli.SECTIONS_READ.items():
        assert set(read) <= names, command


# --- posttrain config keys / show


def test_config_keys_prints_one_line_a_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "keys", "optim"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "# optim: AdamW and its learning-rate schedule"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {f"optim.{f.name}" for f in dataclasses.fields(Config().optim)}
    assert re.fullmatch(r"optim\.schedule\s+constant\s+constant \| cosine \| linear", rows["optim.schedule"])
    assert rows["optim.min_lr_ratio"].endswith("-- final lr / peak lr for cosine and linear")


def test_config_keys_of_everything_of_a_nested_section_and_of_one_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "keys"]) == 0
    every = capsys.readouterr().out
    assert all(d.key in every for d in describe.all_keys())
    assert cli.main(["config", "keys", "data.arithmetic"]) == 0
    nested = [line for line in capsys.readouterr().out.splitlines() if line and not line.startswith("#")]
    assert len(nested) == 5 and all(line.startswith("data.arithmetic.") for line in nested)
    assert cli.main(["config", "keys", "grpo.kl_coef"]) == 0
    assert capsys.readouterr().out.splitlines()[1].startswith("grpo.kl_coef ")
    assert cli.main(["config", "keys", "top level"]) == 0
    assert "output_dir" in capsys.readouterr().out


def test_config_keys_of_an_unknown_section_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "keys", "optimm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "posttrain: error: command line: config keys: no section or key 'optimm'; did you mean 'optim'?"


def test_config_show_prints_yaml_that_loads_back_to_the_same_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", "show", "--config", "quickstart", "optim.lr=3e-4"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# posttrain config show: ")
    data = yaml.safe_load(text)
    assert data["optim"]["lr"] == 3e-4 and data["name"] == "quickstart" and "sft" in data["stages"]
    (tmp_path / "shown.yaml").write_text(text)
    expected = load_config(cli.resolve_config("quickstart"), ["optim.lr=3e-4"])
    assert load_config(tmp_path / "shown.yaml") == expected


def test_config_show_with_a_stage_merges_its_overlay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show", "--config", "quickstart", "--stage", "sft", "train.max_steps=7"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert "stages" not in data
    assert data["train"]["max_steps"] == 7 and data["optim"]["schedule"] == "cosine"  # stages.sft's overlay
    (tmp_path / "sft.yaml").write_text(text)
    staged = load_config(cli.resolve_config("quickstart"), ["train.max_steps=7"], stage="sft")
    assert load_config(tmp_path / "sft.yaml") == dataclasses.replace(staged, stages={})


def test_config_show_without_a_file_prints_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == to_dict(Config())


def test_config_show_refuses_a_bad_override_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["config", "show", "optim.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "posttrain: error: command line: optim.lrr: unknown key 'lrr'; did you mean 'lr'?"


# --- the default output directory


def test_a_command_without_output_dir_or_name_gets_a_fresh_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    extra = cli.default_output("sft", None, ["model.path=x"], resume=False, world=1)
    assert len(extra) == 1 and re.fullmatch(r"output_dir=runs/sft-\d{8}-\d{6}", extra[0])
    assert extra[0].removeprefix("output_dir=") in capsys.readouterr().err  # printed at start
    out = Path(extra[0].removeprefix("output_dir="))
    out.mkdir(parents=True)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt: out.name.removeprefix("sft-"))
    assert cli.fresh_output_dir("sft") == out.with_name(f"{out.name}-2")  # never an existing directory
    # the packaged quickstart's name is the demo's: sft of it still gets a fresh directory, not runs/quickstart
    quick = cli.resolve_config("quickstart")
    assert cli.default_output("sft", quick, [], resume=False, world=1)[0].startswith("output_dir=runs/sft-")
    assert cli.default_output("run", quick, ["model.path=x"], resume=False, world=1) == []  # the demo
    assert cli.default_output("run", None, [], resume=False, world=1) == []
    my = tmp_path / "my.yaml"
    my.write_text("train: {max_steps: 3}\n")
    assert cli.default_output("run", my, [], resume=False, world=1)[0].startswith("output_dir=runs/run-")


def test_an_output_dir_or_a_name_is_kept(tmp_path: Path) -> None:
    assert cli.default_output("grpo", None, ["output_dir=o"], resume=True, world=2) == []
    assert cli.default_output("grpo", None, ["name=mine"], resume=True, world=2) == []
    named = tmp_path / "n.yaml"
    named.write_text("name: mine\n")
    assert cli.default_output("dpo", named, [], resume=False, world=1) == []
    staged = tmp_path / "s.yaml"
    staged.write_text("stages:\n  sft: {output_dir: somewhere}\n")
    assert cli.default_output("sft", staged, [], resume=False, world=1) == []


def test_eval_without_a_directory_shares_one_sample_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert "eval.cache_dir=runs/eval_cache" in cli.default_output("eval", None, [], resume=False, world=1)
    assert len(cli.default_output("eval", None, ["eval.cache_dir=c"], resume=False, world=1)) == 1


def test_resume_without_output_dir_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sft", "--resume", "model.path=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("posttrain: error: command line: --resume: --resume needs the run to continue: give its ")
    assert "output_dir=DIR (or name=NAME)" in err


def test_torchrun_without_output_dir_is_refused() -> None:
    with pytest.raises(ConfigError, match="under torchrun, give output_dir=DIR"):
        cli.default_output("sft", None, [], resume=False, world=2)
