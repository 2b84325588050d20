"""``profit-edu assignments build``: the student and instructor editions of the book's assignments.

Each assignment has one *source* notebook (``book/assignments/source/NN_name.ipynb``) that holds everything: the
text, the exercises with their solutions, the public checks and the hidden ones. This command writes two editions
of each:

* the **student edition**: every solution region replaced by ``raise NotImplementedError("<hint>")``, every
  written-answer region by a placeholder, hidden-check cells removed. Its public checks then report "not
  implemented yet" until the student fills the functions in; the notebook runs top to bottom either way.
* the **instructor edition**: solutions and hidden checks kept, a note on top. Run it to see every check pass.

The markers, in a source notebook::

    def duq_levels(c, bits, mode):              # a code cell
        # HINT: one line: what to do, the student reads it in the error message
        ### BEGIN SOLUTION
        ...                                     # the solution (indented: always inside a function)
        ### END SOLUTION

    <!-- BEGIN SOLUTION -->                     (a markdown cell: a written answer)
    The model answer.
    <!-- END SOLUTION -->

and the cell tag ``hidden-check`` on a code cell that runs a check with ``hidden=True``. After editing a source in
Jupyter, strip it (``python book/_tools/nbtool.py strip book/assignments/source/*.ipynb``) and run
``make assignments``; a test fails while the committed student editions differ from the build.

Output is deterministic (building twice gives the same bytes): outputs, execution counts and cell metadata other
than tags are dropped, cell ids are numbered from the source, JSON keys are sorted, nothing records a time. By
default everything goes to ``runs/assignments/{student,instructor}/``; a file that exists with other content is
only replaced with ``--force``, so a build never silently overwrites anything (``make assignments`` copies the
student editions into ``book/assignments/``, where the book renders them).

``--otter`` also writes, per assignment, ``otter/<name>/tests/<check>.py`` in Otter-Grader's OK format (one test
per check, its public and hidden calls as doctest cases) and a ``requirements.txt``, for ``otter generate`` and
``otter grade``. Writing them needs nothing beyond the standard library.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import pprint
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._paths import source_checkout
from ..atomic import atomic_write_bytes
from .common import CLIError, say

__all__ = [
    "BEGIN",
    "EDITIONS",
    "END",
    "HIDDEN_TAG",
    "HINT",
    "AssignmentError",
    "add_assignments_parser",
    "build",
    "cmd_assignments_build",
    "dumps",
    "make_edition",
    "otter_files",
    "source_notebooks",
]

BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "# HINT:"
MD_BEGIN, MD_END = "<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"
HIDDEN_TAG = "hidden-check"
EDITIONS = ("student", "instructor")
STUDENT_ANSWER = "**Your answer:** *write it here (double-click this cell to edit it).*"
DEFAULT_OUT = Path("runs/assignments")
SOURCE_FOLDER = Path("book/assignments/source")


class AssignmentError(ValueError):
    """A source notebook breaks the marker rules; the message names the file, the cell and the line."""


# --------------------------------------------------------------------------------------------
# One cell
# --------------------------------------------------------------------------------------------
def _text(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _lines(text: str) -> list[str]:
    """A cell source as Jupyter stores it: a list of lines, each but the last ending in a newline."""
    return text.splitlines(keepends=True)


def _regions(lines: list[str], begin: str, end: str, where: str) -> list[tuple[int, int]]:
    """(first, last) line indices of every begin/end pair, checked to be balanced and not nested."""
    found, start = [], None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped == begin:
            if start is not None:
                raise AssignmentError(f"{where}, line {i + 1}: {begin} inside another solution region")
            start = i
        elif stripped == end:
            if start is None:
                raise AssignmentError(f"{where}, line {i + 1}: {end} without {begin}")
            found.append((start, i))
            start = None
    if start is not None:
        raise AssignmentError(f"{where}, line {start + 1}: {begin} is never closed by {end}")
    return found


def student_code(source: str, where: str) -> str:
    """A code cell's source with each solution region replaced by ``raise NotImplementedError(<its hint>)``.

    Raises:
        AssignmentError: unbalanced markers, a region at the top level (it must sit inside a function, so that
            the student edition runs to the end), or a region without a ``# HINT:`` line right above it.
    """
    lines = source.splitlines()
    out, done = [], 0
    for first, last in _regions(lines, BEGIN, END, where):
        indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
        if not indent:
            raise AssignmentError(f"{where}, line {first + 1}: a solution region must be inside a function "
                                  "(indented), so that the student edition still runs")
        above = lines[first - 1].strip() if first > 0 else ""
        if not above.startswith(HINT) or not above[len(HINT):].strip():
            raise AssignmentError(f"{where}, line {first + 1}: put a '{HINT} ...' line right above {BEGIN}")
        out += [*lines[done:first], f"{indent}raise NotImplementedError({above[len(HINT):].strip()!r})"]
        done = last + 1
    return "\n".join(out + lines[done:])


def student_markdown(source: str, where: str) -> str:
    """A markdown cell's source with each written-answer region replaced by :data:`STUDENT_ANSWER`."""
    lines = source.splitlines()
    out, done = [], 0
    for first, last in _regions(lines, MD_BEGIN, MD_END, where):
        out += [*lines[done:first], STUDENT_ANSWER]
        done = last + 1
    return "\n".join(out + lines[done:])


def _tags(cell: dict[str, Any]) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _clean_cell(cell: dict[str, Any], source: str, cell_id: str) -> dict[str, Any]:
    """A cell with nothing but its type, id, tags and source (plus empty outputs for code)."""
    out: dict[str, Any] = {"cell_type": cell["cell_type"], "id": cell_id,
                           "metadata": {"tags": _tags(cell)} if _tags(cell) else {}, "source": _lines(source)}
    if cell["cell_type"] == "code":
        out |= {"execution_count": None, "outputs": []}
    return out


# --------------------------------------------------------------------------------------------
# One notebook
# --------------------------------------------------------------------------------------------
def _title(nb: dict[str, Any]) -> str:
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown" and _text(cell).startswith("# "):
            return _text(cell).splitlines()[0][2:].strip()
    return "this assignment"


def _instructor_note(nb: dict[str, Any]) -> dict[str, Any]:
    text = (f"```{{admonition}} Instructor edition\n:class: warning\n"
            f"This is the instructor edition of *{_title(nb)}*: it holds the solutions and the hidden checks "
            "(cells tagged `hidden-check`). Hand out the student edition; see the README's section for "
            "instructors.\n```")
    return {"cell_type": "markdown", "id": "instructor-note", "metadata": {}, "source": _lines(text)}


def make_edition(nb: dict[str, Any], edition: str, name: str) -> dict[str, Any]:
    """The ``edition`` ("student" or "instructor") of the source notebook ``nb`` (a parsed .ipynb), stripped.

    Args:
        nb: the source notebook.
        edition: which edition.
        name: the assignment's name (its file stem), for messages and the notebook's metadata.

    Raises:
        AssignmentError: a marker rule is broken (see :func:`student_code`); a hidden-check cell is not code.
        ValueError: an unknown edition.
    """
    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {EDITIONS}, got {edition!r}")
    cells = [] if edition == "student" else [_instructor_note(nb)]
    for i, cell in enumerate(nb["cells"]):
        where, source, kind = f"{name}, cell {i}", _text(cell), cell["cell_type"]
        if HIDDEN_TAG in _tags(cell) and kind != "code":
            raise AssignmentError(f"{where}: only code cells can be tagged {HIDDEN_TAG!r}")
        if kind == "code":
            student = student_code(source, where)  # checks the markers in both editions
        else:
            student = student_markdown(source, where) if kind == "markdown" else source
        if edition == "student":
            if HIDDEN_TAG in _tags(cell):
                continue
            source = student
        cells.append(_clean_cell(cell, source, f"cell-{i:02d}"))
    kernel = nb.get("metadata", {}).get("kernelspec", {"display_name": "Python 3", "language": "python",
                                                         "name": "python3"})
    metadata = {"kernelspec": kernel, "language_info": {"name": "python"},
                "profit_edu": {"assignment": name, "edition": edition}}
    return {"cells": cells, "metadata": metadata, "nbformat": 4, "nbformat_minor": 5}


def dumps(nb: dict[str, Any]) -> str:
    """The notebook as stable JSON (sorted keys, one-space indent, as nbformat writes it), newline-terminated."""
    return json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


# --------------------------------------------------------------------------------------------
# Otter-Grader export
# --------------------------------------------------------------------------------------------
def _check_call(source: str) -> tuple[str, str] | None:
    """(check name, expression) when a cell is one call of a ``check_*`` function, else None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr) or not isinstance(tree.body[0].value, ast.Call):
        return None
    func = tree.body[0].value.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    if not name.startswith("check_"):
        return None
    return name.removeprefix("check_"), ast.get_source_segment(source, tree.body[0].value) or ""


def _doctest(expression: str) -> str:
    lines = f"({expression}).passed".splitlines()
    return "\n".join([f">>> {lines[0]}", *[f"... {line}" for line in lines[1:]], "True"])


def otter_files(nb: dict[str, Any]) -> dict[str, str]:
    """Otter-Grader files for a source notebook: ``tests/<check>.py`` (OK format) and ``requirements.txt``.

    Each check called in the notebook becomes one test; its public and hidden calls (cells tagged
    :data:`HIDDEN_TAG`) are its cases, one point each, and a case passes when the check's result has ``passed``.
    """
    tests: dict[str, list[dict[str, Any]]] = {}
    for cell in nb["cells"]:
        found = _check_call(_text(cell)) if cell["cell_type"] == "code" else None
        if found is not None:
            name, expression = found
            tests.setdefault(name, []).append({"code": _doctest(expression), "hidden": HIDDEN_TAG in _tags(cell),
                                               "locked": False, "points": 1})
    files = {}
    for name, cases in tests.items():
        test = {"name": name, "suites": [{"cases": cases, "scored": True, "setup": "", "teardown": "",
                                          "type": "doctest"}]}
        files[f"tests/{name}.py"] = f"OK_FORMAT = True\n\ntest = {pprint.pformat(test, sort_dicts=True)}\n"
    spec = re.search(r'"(profit-edu @ [^"]+)"', "".join(_text(c) for c in nb["cells"] if c["cell_type"] == "code"))
    files["requirements.txt"] = (spec.group(1) if spec else "profit-edu") + "\n"
    return files


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------
def source_notebooks(folder: Path) -> list[Path]:
    """The source notebooks in ``folder`` (``NN_name.ipynb``), in order."""
    return sorted(folder.glob("[0-9][0-9]_*.ipynb"))


def _status(path: Path, data: bytes) -> str:
    """"new", "unchanged" or "changed": what writing ``data`` to ``path`` would do."""
    if not path.is_file():
        return "new"
    return "unchanged" if path.read_bytes() == data else "changed"


def build(sources: Sequence[Path], out: Path, *, editions: Sequence[str] = EDITIONS, otter: bool = False,
          force: bool = False) -> dict[Path, str]:
    """Write the editions of each source notebook under ``out/<edition>/`` (and ``out/otter/<name>/``).

    Every file is made (and every source checked) before anything is written, and nothing is written when a file
    would be replaced without ``force``.

    Returns:
        Each output path and what happened to it ("wrote" or "unchanged").

    Raises:
        AssignmentError: a source breaks the marker rules.
        CLIError: files exist with other content and ``force`` is False (the message lists them).
    """
    planned: dict[Path, bytes] = {}
    for path in sources:
        nb = json.loads(path.read_text())
        for edition in editions:
            planned[out / edition / path.name] = dumps(make_edition(copy.deepcopy(nb), edition, path.stem)).encode()
        if otter:
            for rel, text in otter_files(nb).items():
                planned[out / "otter" / path.stem / rel] = text.encode()
    status = {target: _status(target, data) for target, data in planned.items()}
    changed = [str(target) for target, what in status.items() if what == "changed"]
    if changed and not force:
        raise CLIError(f"{', '.join(changed)} exist{'s' if len(changed) == 1 else ''} with other content: pass "
                       "--force to replace them, or choose another --out")
    for target, data in planned.items():
        if status[target] != "unchanged":
            atomic_write_bytes(target, data)
    return {target: "unchanged" if what == "unchanged" else "wrote" for target, what in status.items()}


def add_assignments_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``assignments build`` on the ``profit-edu`` subparsers (handler :func:`cmd_assignments_build`)."""
    p = commands.add_parser("assignments", help="build the student and instructor editions of the assignments",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", title="actions", metavar="ACTION", required=True)
    b = actions.add_parser("build", help="write the student and instructor editions (and optionally Otter tests)",
                           description="Write the editions of every source notebook (see 'profit-edu assignments "
                                       "--help' for the markers).")
    b.add_argument("--source", type=Path, default=None, metavar="DIR",
                   help=f"the source notebooks (default: {SOURCE_FOLDER} of this source checkout)")
    b.add_argument("--out", type=Path, default=DEFAULT_OUT, metavar="DIR",
                   help=f"where <edition>/<name>.ipynb go (default: {DEFAULT_OUT})")
    b.add_argument("--edition", choices=[*EDITIONS, "both"], default="both", help="which edition (default: both)")
    b.add_argument("--otter", action="store_true", help="also write Otter-Grader tests to OUT/otter/<name>/")
    b.add_argument("--force", action="store_true", help="replace files that exist with other content")
    b.set_defaults(handler=cmd_assignments_build)


def cmd_assignments_build(args: argparse.Namespace) -> int:
    """Run ``profit-edu assignments build``."""
    folder = args.source
    if folder is None:
        root = source_checkout()
        if root is None:
            raise CLIError("this profit_edu is an installed package without the book: pass --source DIR")
        folder = root / SOURCE_FOLDER
    sources = source_notebooks(folder)
    if not sources:
        raise CLIError(f"no source notebooks (NN_name.ipynb) in {folder}")
    editions = EDITIONS if args.edition == "both" else (args.edition,)
    try:
        done = build(sources, args.out, editions=editions, otter=args.otter, force=args.force)
    except AssignmentError as err:
        raise CLIError(str(err)) from err
    for path, what in done.items():
        say(f"{what:9} {path}")
    return 0
