"""The wheel works on its own: it ships the named experiments, and an install of it (not
the editable one of the repository) runs ``posttrain`` from a directory with no YAML in it.

Also ``--config`` resolution: a file, a packaged experiment's name, or a one-line error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from posttrain import experiments
from posttrain.cli import default_config, main, resolve_config
from posttrain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
NAMES = [
    "adaptive-decoding",
    "aggregation-arithmetic",
    "compare-dpo-grpo",
    "divpo-arithmetic",
    "hero-arithmetic",
    "judge-arithmetic",
    "judge-smollm2",
    "lift-arithmetic",
    "predict-rl",
    "quickstart",
    "smollm2-gsm8k",
]


def test_packaged_experiments_are_found_by_name() -> None:
    assert experiments.names() == NAMES
    assert default_config() == experiments.path("quickstart")
    assert default_config().parent == ROOT / "posttrain" / "experiments"
    assert resolve_config("compare-dpo-grpo") == experiments.path("compare-dpo-grpo")
    assert resolve_config("predict-rl.yaml") == experiments.path("predict-rl")


def test_a_config_file_wins_over_a_packaged_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("quickstart").write_text("name: mine\n")
    assert resolve_config("quickstart") == Path("quickstart")
    assert resolve_config(str(tmp_path / "quickstart")) == tmp_path / "quickstart"


def test_an_unknown_config_is_one_line_listing_the_packaged_names(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"packaged: {', '.join(NAMES)})") + "$"):
        resolve_config("quikstart")
    with pytest.raises(ConfigError, match="unknown"):
        experiments.path("unknown")
    # the old location of the quickstart: the error names the experiment to use instead
    assert main(["run", "--config", "recipes/quickstart.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("posttrain: error: command line: --config: recipes/quickstart.yaml: no such file")
    assert err.rstrip().endswith("did you mean --config quickstart?")


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _sys_path(python: str | Path) -> list[str]:
    # -I: no PYTHONPATH, no user site, no cwd; only what the interpreter's own site-packages give
    out = _run([str(python), "-I", "-c", "import json, sys; print(json.dumps(sys.path))"], cwd=Path("/"))
    return [p for p in json.loads(out.stdout) if p]


def test_wheel_ships_the_experiments_and_runs_without_the_repository(tmp_path: Path) -> None:
    # Build from a copy of the sources: an in-tree build would leave build/ in the repository,
    # and a stale build/lib could hide a file missing from package-data.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "posttrain", src / "posttrain", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for extra in ["pyproject.toml", "README.md", *(p.name for p in ROOT.glob("LICEN[CS]E*")), "MANIFEST.in"]:
        if (ROOT / extra).is_file():
            shutil.copy(ROOT / extra, src / extra)
    pip_env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # never download
    pip_env.pop("PYTHONPATH", None)
    dist = tmp_path / "dist"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)],
        cwd=tmp_path,
        env=pip_env,
    )
    (wheel,) = dist.glob("posttrain-*.whl")
    files = set(zipfile.ZipFile(wheel).namelist())
    assert {f"posttrain/experiments/{n}.yaml" for n in NAMES} <= files
    assert {"posttrain/py.typed", "posttrain/experiments/__init__.py", "posttrain/cli.py"} <= files
    assert not [f for f in files if f.startswith("recipes/")]

    # A fresh venv without pip, the wheel installed into it by this pip (--python), no dependencies.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    fresh = _sys_path(python)
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)],
         cwd=tmp_path, env=pip_env)  # fmt: skip
    # The dependencies (torch, transformers, yaml, ...) come from this interpreter's sys.path,
    # appended by a .pth of plain directory lines. Python adds such lines to sys.path after the
    # fresh site-packages and does not run the .pth files inside them, so the editable install's
    # finder (a .pth hook) never loads; a directory holding a posttrain package (a legacy
    # editable install's path entry, the repository root) is left out too. The fresh
    # site-packages comes first either way, and the check below proves which posttrain ran.
    deps = [p for p in _sys_path(sys.executable) if p not in fresh and not (Path(p) / "posttrain").is_dir()]
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = _run([str(python), "-I", "-c", purelib], cwd=tmp_path).stdout.strip()
    assert site in fresh
    (Path(site) / "_dev_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))

    work = tmp_path / "work"  # no recipes/, no posttrain/ here
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    check = (
        "import json, sys, posttrain\n"
        "from posttrain import experiments\n"
        "from posttrain.cli import default_config, resolve_config\n"
        "from posttrain.config import load_config\n"
        "path = default_config()\n"
        "cfg = load_config(path, stage='grpo')\n"
        "print(json.dumps({'package': posttrain.__file__, 'config': str(path), 'name': cfg.name,\n"
        "    'stages': sorted(cfg.stages), 'names': experiments.names(),\n"
        "    'compare': load_config(resolve_config('compare-dpo-grpo')).name,\n"
        "    'finders': [type(f).__module__ for f in sys.meta_path]}))\n"
    )
    got = json.loads(_run([str(python), "-I", "-c", check], cwd=work, env=env).stdout)
    assert Path(got["package"]).is_relative_to(site), got["package"]
    assert not [f for f in got["finders"] if "editable" in f], got["finders"]
    assert Path(got["config"]) == Path(site) / "posttrain" / "experiments" / "quickstart.yaml"
    assert got["name"] == "quickstart"
    assert {"sft", "grpo"} <= set(got["stages"])
    assert got["names"] == NAMES
    assert got["compare"]

    script = env_dir / "bin" / "posttrain"
    assert "usage: posttrain" in _run([str(script), "--help"], cwd=work, env=env).stdout
    bad = subprocess.run([str(script), "run", "--config", "nope"], cwd=work, env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert f"packaged: {', '.join(NAMES)}" in bad.stderr
