"""The assignments (``book/assignments/``): the committed student editions are exactly what ``make assignments``
builds from the sources, the build is deterministic, the instructor editions pass every public and hidden check,
and the student editions run to the end with every check saying "not implemented yet" and nothing else.

The executed copies go to ``_build/test-assignments/<edition>/``; nothing committed is touched.
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from profit_edu.cli.assignments import BEGIN, END, HIDDEN_TAG, build, dumps, make_edition, source_notebooks

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_tools"))
import nbtool  # noqa: E402

FOLDER = ROOT / "book" / "assignments"
SOURCES = source_notebooks(FOLDER / "source")
EXECUTED = ROOT / "_build" / "test-assignments"
#: Each notebook runs in well under a minute on 2 cores; this only catches runaways.
NOTEBOOK_LIMIT_S = 600
IDS = [p.stem for p in SOURCES]


def _nb(path: Path) -> dict:
    return json.loads(path.read_text())


def _text(cell: dict) -> str:
    return "".join(cell["source"])


def _check_name(source: str) -> str | None:
    """``duq_levels`` for a cell that is one call ``ac.check_duq_levels(...)``, else None."""
    tree = ast.parse(source)
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Call):
        func = tree.body[0].value.func
        if isinstance(func, ast.Attribute) and func.attr.startswith("check_"):
            return func.attr.removeprefix("check_")
    return None


def test_there_are_four_assignments_each_with_a_student_edition() -> None:
    assert IDS == ["01_duq_by_hand", "02_negative_padding", "03_aiwq_and_freezing", "04_packing_and_deployment"]
    assert sorted(p.name for p in FOLDER.glob("[0-9][0-9]_*.ipynb")) == [p.name for p in SOURCES]


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_the_committed_student_edition_is_the_build_of_its_source(source: Path) -> None:
    want = dumps(make_edition(_nb(source), "student", source.stem))
    assert (FOLDER / source.name).read_text() == want, f"{source.name}: the student edition is stale (make assignments)"


def test_building_the_real_sources_twice_gives_identical_bytes(tmp_path: Path) -> None:
    first = build(SOURCES, tmp_path / "a", otter=True)
    build(SOURCES, tmp_path / "b", otter=True)
    assert len(first) == 2 * len(SOURCES) + sum(1 + len({_check_name(_text(c)) for c in _nb(s)["cells"]
                                                         if c["cell_type"] == "code"} - {None}) for s in SOURCES)
    for path in first:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes(), path


@pytest.mark.parametrize("path", [*SOURCES, *(FOLDER / p.name for p in SOURCES)],
                         ids=[f"source-{i}" for i in IDS] + [f"student-{i}" for i in IDS])
def test_committed_without_outputs_and_with_the_colab_install_cell(path: Path) -> None:
    url, branch = nbtool.repository()
    assert nbtool.problems(path, url, branch) == []


@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_every_public_check_has_a_hidden_one_and_the_student_edition_hides_the_solutions(source: Path) -> None:
    nb = _nb(source)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    public = {_check_name(_text(c)) for c in code if HIDDEN_TAG not in c["metadata"].get("tags", [])} - {None}
    hidden = {_check_name(_text(c)) for c in code if HIDDEN_TAG in c["metadata"].get("tags", [])}
    assert len(public) == 4 and public == hidden, f"{source.name}: public {public}, hidden {hidden}"
    assert any("<!-- BEGIN SOLUTION -->" in _text(c) for c in nb["cells"]), "a written question with a model answer"
    student = (FOLDER / source.name).read_text()
    assert BEGIN not in student and "hidden=True" not in student and HIDDEN_TAG not in student
    leaked, inside = [], False
    for line in (line.strip() for cell in code for line in _text(cell).splitlines()):
        if line in (BEGIN, END):
            inside = line == BEGIN
        elif inside and len(line) > 25 and line in student:  # long enough not to occur by chance
            leaked.append(line)
    assert not leaked, f"{source.name}: solution lines in the student edition: {leaked}"


def test_the_table_of_contents_has_an_assignments_part() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    part = next(p for p in toc["parts"] if p["caption"] == "Assignments")
    assert [c["file"] for c in part["chapters"]] == ["book/assignments/intro", *(f"book/assignments/{i}" for i in IDS)]


# --------------------------------------------------------------------------------------------
# Running them
# --------------------------------------------------------------------------------------------
def _execute(nb_dict: dict, edition: str, name: str) -> nbformat.NotebookNode:
    from nbclient import NotebookClient

    nb = nbformat.reads(dumps(nb_dict), as_version=4)  # as Jupyter reads it: sources joined into strings
    saved = os.environ.get("PROFIT_EDU_QUICK")
    os.environ["PROFIT_EDU_QUICK"] = "1"  # the kernel inherits the environment
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(FOLDER)}}).execute()
    finally:
        if saved is None:
            os.environ.pop("PROFIT_EDU_QUICK", None)
        else:
            os.environ["PROFIT_EDU_QUICK"] = saved
    (EXECUTED / edition).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, EXECUTED / edition / f"{name}.ipynb")
    return nb


def _outputs(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts += [out.get("text", ""), out.get("data", {}).get("text/plain", ""), out.get("evalue", "")]
    return "\n".join("".join(p) if isinstance(p, list) else str(p) for p in parts)


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [f"cell {i}: {o.ename}: {o.evalue}" for i, c in enumerate(nb.cells) if c.cell_type == "code"
            for o in c.outputs if o.output_type == "error"]


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_LIMIT_S)
@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_the_instructor_edition_passes_every_public_and_hidden_check(source: Path) -> None:
    nb = _execute(make_edition(_nb(source), "instructor", source.stem), "instructor", source.stem)
    assert not _errors(nb), _errors(nb)
    checks = [(c, _check_name(c.source)) for c in nb.cells if c.cell_type == "code" and _check_name(c.source)]
    assert len(checks) == 8
    for cell, name in checks:
        text = _outputs(cell).strip()
        label = f"{name} (hidden cases)" if HIDDEN_TAG in cell.metadata.get("tags", []) else name
        assert re.match(rf"{re.escape(label)}: all \d+ cases passed", text), f"{source.name}: {text}"
    assert re.search(r"total\s+(\d+) / \1\b", _outputs(nb.cells[-1])), _outputs(nb.cells[-1])


@pytest.mark.slow
@pytest.mark.timeout(NOTEBOOK_LIMIT_S)
@pytest.mark.parametrize("source", SOURCES, ids=IDS)
def test_the_student_edition_runs_and_fails_only_with_not_implemented(source: Path) -> None:
    nb = _execute(_nb(FOLDER / source.name), "student", source.stem)
    assert not _errors(nb), _errors(nb)  # no cell raises: the checks catch NotImplementedError
    checks = [(c, _check_name(c.source)) for c in nb.cells if c.cell_type == "code" and _check_name(c.source)]
    assert len(checks) == 4
    for cell, name in checks:
        lines = _outputs(cell).strip().splitlines()
        assert re.match(rf"{name}: 0 of \d+ cases passed", lines[0]), lines
        failures = [line for line in lines[1:] if line.lstrip().startswith("FAIL")]
        assert len(failures) == 1 and "not implemented yet: NotImplementedError: " in failures[0], lines
    assert re.search(r"total\s+0 / [1-9]", _outputs(nb.cells[-1])), _outputs(nb.cells[-1])
    shown = "\n".join(_outputs(c) for c in nb.cells if c.cell_type == "code")
    for local in {str(ROOT), str(ROOT.parent), str(Path.home()), "/tmp/"}:
        assert local not in shown, f"{source.name} shows the local path {local!r}"
