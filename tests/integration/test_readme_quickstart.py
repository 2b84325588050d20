"""The README's quick start, parsed from the page and run at tiny scale: every command exits 0 and writes where the
page says. The page's commands and this test cannot drift apart: the only edits are the scale (``--recipe tiny``
for ``quick``), synthetic data for the shipped model's evaluation when no CIFAR-10 copy exists, and the sample
image's name (synthetic images have other class names)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from profit_edu.cli import main as cli_main
from profit_edu.data import cifar10_or_synthetic

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- quickstart:start -->", "<!-- quickstart:end -->"


def readme_commands() -> list[list[str]]:
    """The profit-edu commands of the README's quick-start block, as argument lists (comments dropped)."""
    block = (ROOT / "README.md").read_text().split(START, 1)[1].split(END, 1)[0]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in block.splitlines() if line.startswith("profit-edu ")]


def tiny(argv: list[str], *, have_cifar: bool) -> list[str]:
    argv = ["tiny" if a == "quick" and argv[argv.index(a) - 1] == "--recipe" else a for a in argv]
    if argv[0] == "evaluate" and argv[1].startswith("data/pretrained/"):
        argv[1] = str(ROOT / argv[1])
        argv += ["--images", "256"] + (["--dataset", "synthetic"] if not have_cifar else [])
    return argv


def test_readme_quickstart_runs_at_tiny_scale(tmp_path, monkeypatch):
    commands = readme_commands()
    assert [c[0] for c in commands] == ["evaluate", "train", "evaluate", "pack", "samples", "run-packed", "plan"]
    _, fell_back = cifar10_or_synthetic(False, n=10)
    monkeypatch.chdir(tmp_path)
    for argv in commands:
        argv = tiny(argv, have_cifar=not fell_back)
        if argv[0] == "run-packed":  # the first sample, whatever its class is called
            argv[-1] = str(sorted(Path("runs/samples").glob("0_*.png"))[0])
        assert cli_main(argv) == 0, argv
        if argv[0] == "train":
            assert (Path(argv[argv.index("--out") + 1]) / "recipe.json").is_file()
    for written in ("runs/quick.pqm", "runs/quick.onnx"):
        assert Path(written).is_file(), written
    assert len(list(Path("runs/samples").glob("*.png"))) == 10
