"""profit_edu.cli.assignments: the marker rules, the two editions, deterministic output, no silent overwrite, and the
Otter-Grader export (its doctests run against a stand-in check)."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import pytest

from profit_edu.cli import main
from profit_edu.cli.assignments import (
    STUDENT_ANSWER,
    AssignmentError,
    build,
    dumps,
    make_edition,
    otter_files,
    student_code,
    student_markdown,
)
from profit_edu.cli.common import CLIError

SOLVED = '''def double(x):
    """Twice x."""
    # HINT: multiply by two
    ### BEGIN SOLUTION
    y = x * 2
    return y
    ### END SOLUTION


print(double(2))'''


def _cell(kind: str, source: str, tags: tuple[str, ...] = ()) -> dict:
    cell = {"cell_type": kind, "id": "whatever", "metadata": {"tags": list(tags), "collapsed": True},
            "source": source.splitlines(keepends=True)}
    if kind == "code":
        cell |= {"execution_count": 7, "outputs": [{"output_type": "stream", "name": "stdout", "text": "4\n"}]}
    return cell


def _notebook() -> dict:
    return {"cells": [_cell("markdown", "# Assignment 0. Doubling\n\nText."),
                      _cell("code", SOLVED),
                      _cell("code", "ac.check_double(double)"),
                      _cell("code", "ac.check_double(double,\n               hidden=True)", tags=("hidden-check",)),
                      _cell("markdown", "Why?\n<!-- BEGIN SOLUTION -->\nBecause.\n<!-- END SOLUTION -->\nEnd.")],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                         "language_info": {"name": "python", "version": "3.11.4"}, "widgets": {"x": 1}},
            "nbformat": 4, "nbformat_minor": 5}


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_student_code_raises_with_the_hint_where_the_solution_was() -> None:
    out = student_code(SOLVED, "t")
    assert "BEGIN SOLUTION" not in out and "y = x * 2" not in out
    assert "    # HINT: multiply by two\n    raise NotImplementedError('multiply by two')\n" in out
    assert out.endswith("print(double(2))")
    namespace: dict = {}
    exec(out.replace("print(double(2))", ""), namespace)  # the student edition still defines the function
    with pytest.raises(NotImplementedError, match="multiply by two"):
        namespace["double"](1)


@pytest.mark.parametrize(("source", "message"), [
    ("def f():\n    # HINT: h\n    ### BEGIN SOLUTION\n    return 1\n", "never closed"),
    ("def f():\n    ### END SOLUTION\n", "without ### BEGIN SOLUTION"),
    ("def f():\n    # HINT: h\n    ### BEGIN SOLUTION\n    ### BEGIN SOLUTION\n", "inside another"),
    ("# HINT: h\n### BEGIN SOLUTION\nx = 1\n### END SOLUTION\n", "inside a function"),
    ("def f():\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n", "HINT: ...' line right above"),
    ("def f():\n    # HINT:\n    ### BEGIN SOLUTION\n    return 1\n    ### END SOLUTION\n", "line right above"),
])
def test_broken_markers_are_errors_that_say_where(source: str, message: str) -> None:
    with pytest.raises(AssignmentError, match=message) as err:
        student_code(source, "01_x, cell 3")
    assert "01_x, cell 3, line " in str(err.value)


def test_student_markdown_replaces_the_written_answer() -> None:
    out = student_markdown("Q?\n<!-- BEGIN SOLUTION -->\nA.\n<!-- END SOLUTION -->\nEnd.", "t")
    assert out == f"Q?\n{STUDENT_ANSWER}\nEnd."


def test_the_student_edition_has_no_solutions_no_hidden_checks_and_no_outputs() -> None:
    nb = make_edition(_notebook(), "student", "00_doubling")
    text = dumps(nb)
    assert "BEGIN SOLUTION" not in text and "Because." not in text and "hidden=True" not in text
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code", "code", "markdown"]
    assert [c["id"] for c in nb["cells"]] == ["cell-00", "cell-01", "cell-02", "cell-04"]  # numbered from the source
    for cell in nb["cells"]:
        assert cell["metadata"] == {}  # "collapsed" dropped, empty tags dropped
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None
    assert nb["metadata"] == {"kernelspec": _notebook()["metadata"]["kernelspec"], "language_info": {"name": "python"},
                              "profit_edu": {"assignment": "00_doubling", "edition": "student"}}


def test_the_instructor_edition_keeps_solutions_and_hidden_checks_under_a_note() -> None:
    nb = make_edition(_notebook(), "instructor", "00_doubling")
    assert nb["cells"][0]["id"] == "instructor-note"
    assert "Instructor edition" in _source(nb["cells"][0]) and "Assignment 0. Doubling" in _source(nb["cells"][0])
    assert _source(nb["cells"][2]) == SOLVED
    assert nb["cells"][4]["metadata"] == {"tags": ["hidden-check"]}
    assert "Because." in _source(nb["cells"][5])
    assert nb["metadata"]["profit_edu"]["edition"] == "instructor"


def test_an_unknown_edition_and_a_hidden_markdown_cell_are_refused() -> None:
    with pytest.raises(ValueError, match="edition must be one of"):
        make_edition(_notebook(), "teacher", "x")
    nb = _notebook()
    nb["cells"][0]["metadata"]["tags"] = ["hidden-check"]
    with pytest.raises(AssignmentError, match="only code cells"):
        make_edition(nb, "student", "x")


def _sources(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "00_doubling.ipynb"
    path.write_text(json.dumps(_notebook()))
    return [path]


def test_building_twice_gives_identical_bytes(tmp_path: Path) -> None:
    sources = _sources(tmp_path / "src")
    first = build(sources, tmp_path / "a", otter=True)
    build(sources, tmp_path / "b", otter=True)
    assert set(first.values()) == {"wrote"} and len(first) == 4  # two editions, one test file, requirements
    for path in first:
        twin = tmp_path / "b" / path.relative_to(tmp_path / "a")
        assert path.read_bytes() == twin.read_bytes(), path
    assert set(build(sources, tmp_path / "a", otter=True).values()) == {"unchanged"}
    text = (tmp_path / "a" / "student" / "00_doubling.ipynb").read_text()
    assert text == dumps(json.loads(text))  # sorted keys, one-space indent, final newline


def test_a_changed_file_is_only_replaced_with_force(tmp_path: Path) -> None:
    sources = _sources(tmp_path / "src")
    target = tmp_path / "out" / "student" / "00_doubling.ipynb"
    target.parent.mkdir(parents=True)
    target.write_text("edited by hand")
    other = tmp_path / "out" / "instructor" / "00_doubling.ipynb"
    with pytest.raises(CLIError, match="exists with other content: pass --force"):
        build(sources, tmp_path / "out", editions=("instructor", "student"))
    assert target.read_text() == "edited by hand"
    assert not other.exists()  # nothing written when one file is refused, even one made before it
    assert build(sources, tmp_path / "out", force=True)[target] == "wrote"
    assert "NotImplementedError" in target.read_text()


def test_the_command_line_builds_one_edition(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _sources(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["assignments", "build", "--source", str(tmp_path / "src"), "--out", str(out), "--edition",
                 "student"]) == 0
    assert (out / "student" / "00_doubling.ipynb").is_file() and not (out / "instructor").exists()
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["assignments", "build", "--source", str(tmp_path / "nothing"), "--out", str(out)])
    assert exit_info.value.code == 2
    assert "no source notebooks" in capsys.readouterr().err


class _Verdict:
    def __init__(self, passed: bool) -> None:
        self.passed = passed


def test_otter_tests_are_ok_format_doctests_that_pass_when_the_check_passes() -> None:
    files = otter_files(_notebook())
    assert sorted(files) == ["requirements.txt", "tests/double.py"]
    assert files["requirements.txt"] == "profit-edu\n"  # no install cell here: the plain package name
    namespace: dict = {}
    exec(files["tests/double.py"], namespace)
    assert namespace["OK_FORMAT"] is True
    test = namespace["test"]
    assert test["name"] == "double" and len(test["suites"]) == 1
    cases = test["suites"][0]["cases"]
    assert [c["hidden"] for c in cases] == [False, True] and all(c["points"] == 1 for c in cases)
    for passed, failures in ((True, 0), (False, 2)):
        fake = type("ac", (), {"check_double": staticmethod(lambda fn, hidden=False, ok=passed: _Verdict(ok))})
        runner = doctest.DocTestRunner(verbose=False)
        for case in cases:
            runner.run(doctest.DocTestParser().get_doctest(case["code"], {"ac": fake, "double": None}, "t", None, 0),
                       out=lambda text: None)
        assert runner.summarize(verbose=False).failed == failures
