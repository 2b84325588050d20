"""The package, its pins and its public names: what a fresh clone and CI rely on."""

import importlib
import json
import re
from pathlib import Path

import pytest
import tomllib
import yaml

import profit_edu
from profit_edu import ledger

ROOT = Path(__file__).resolve().parents[2]


def constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt must pin exactly (name==version), got {line!r}"
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_torch_pins_are_exact_and_as_required():
    pins = constraints()
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_environment_yml_agrees_with_the_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-c requirements/constraints.txt" in pip_section
    assert any(line.startswith("-e .[") and "book" in line and "dev" in line for line in pip_section)
    pins = constraints()
    for line in pip_section:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==(\S+)", line)
        if m:
            assert pins[m.group(1).lower()] == m.group(2), f"environment.yml pins {line}, constraints.txt differs"


def test_package_metadata_has_floors_not_pins():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + [d for extra in meta["optional-dependencies"].values() for d in extra]
    assert not [d for d in deps if "==" in d], "pyproject keeps floors; exact pins live in constraints.txt"
    assert any(d.startswith("torch>=") for d in meta["dependencies"])
    assert meta["scripts"]["profit-edu"] == "profit_edu.cli:main"


def test_every_constrained_requirement_is_pinned():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = constraints()
    deps = meta["dependencies"] + [d for extra in meta["optional-dependencies"].values() for d in extra]
    for dep in deps:
        name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0).lower().replace("_", "-")
        assert name in pins, f"{name} is a dependency but has no exact pin in requirements/constraints.txt"


# the package, its modules, and the two subpackages it does not import (the command line and the chapter support)
PUBLIC_MODULES = ["profit_edu", *[f"profit_edu.{m}" for m in profit_edu.__all__
                                  if not m.startswith("_") and m[0].islower()
                                  and isinstance(getattr(profit_edu, m), type(profit_edu))],
                  "profit_edu.cli", "profit_edu.book",
                  *[f"profit_edu.book.{m}" for m in ("aiwq_plots", "assignment_checks", "checks", "grading", "plots",
                                                     "runtime", "widgets")]]


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_public_names_import_and_are_public(module):
    mod = importlib.import_module(module)
    names = getattr(mod, "__all__", None)
    assert names, f"{module} lists its public names in __all__"
    for name in names:
        assert not name.startswith("_") or name == "__version__", f"{module}.__all__ exposes private {name}"
        assert hasattr(mod, name), f"{module}.__all__ names {name}, which does not exist"


def test_ledger_append_and_read(tmp_path):
    path = tmp_path / "ledger.jsonl"
    rec = ledger.append({"id": "t", "hardware": "cpu", "scale": "tiny", "metric": "top1", "value": 1.0, "seed": 0},
                        path=path)
    assert rec["commit"] and rec["date"] and rec["command"]
    assert ledger.read(path) == [json.loads(path.read_text())]
    with pytest.raises(ValueError, match="lacks"):
        ledger.append({"id": "t"}, path=path)


def test_ledger_commit_is_dirty_for_code_changes_but_not_for_results(tmp_path):
    import shutil
    import subprocess

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "ledger.jsonl").write_text("")
    (tmp_path / "code.py").write_text("x = 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    for cmd in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run(git + cmd, cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "benchmarks" / "results" / "ledger.jsonl").write_text("{}\n")
    assert not ledger.git_commit(tmp_path).endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert ledger.git_commit(tmp_path).endswith("+dirty")


def test_committed_ledger_lines_are_complete():
    for rec in ledger.read():
        missing = [k for k in ledger.REQUIRED_KEYS if k not in rec]
        assert not missing, f"ledger line {rec.get('id')} lacks {missing}"


def test_readme_and_results_page_come_from_the_ledger():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results_page.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readme_shows_the_two_commands_first():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Install and test", 1)[1]
    commands = [line.split("#")[0].strip() for line in quick.split("```", 2)[1].splitlines()[1:] if line.strip()]
    assert commands == ["make test", "make book"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()
