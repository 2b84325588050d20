"""The chapters as committed: outputs stripped, the Colab install cell first, exercises with checks and
solutions that pass, every citation in the bibliography, and a configuration that keeps the book offline."""

from __future__ import annotations

import ast
import json
import math
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import profit_edu as pe
from profit_edu.book import checks

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "book" / "_tools"))
import nbtool  # noqa: E402

CHAPTERS = nbtool.chapters()
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
URL, BRANCH = nbtool.repository()


def _nb(path: Path) -> dict:
    return json.loads(path.read_text())


def _markdown(nb: dict) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def _code_cells(nb: dict) -> list[str]:
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_committed_without_outputs(chapter: Path) -> None:
    nb = _nb(chapter)
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"{chapter.name} cell {i} has outputs: run `book/_tools/nbtool.py strip`"
            assert cell["execution_count"] is None, f"{chapter.name} cell {i} has an execution count"
    assert "widgets" not in nb["metadata"], f"{chapter.name} stores widget state"
    assert nbtool.problems(chapter, URL, BRANCH) == []


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_first_code_cell_installs_only_in_colab(chapter: Path) -> None:
    first = _code_cells(_nb(chapter))[0]
    assert first == nbtool.install_source(URL, BRANCH)
    assert 'if "google.colab" in sys.modules:' in first
    assert f"git+{URL}@{BRANCH}" in first and "--no-deps" in first
    code = "\n".join(line for line in first.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\b(torch|ipywidgets|torchvision)\b", code), "never reinstall Colab's own packages"


def test_colab_installs_and_opens_the_books_release() -> None:
    """One pin, in _config.yml: the release tag, "v" + the package version; never a moving branch."""
    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert BRANCH == f"v{version}", f"_config.yml's repository.branch is {BRANCH!r}; the release tag is v{version}"
    for chapter in CHAPTERS:
        first = _code_cells(_nb(chapter))[0]
        pins = re.findall(r"git\+\S+?@([\w.\-]+)", first)
        assert pins == [BRANCH], f"{chapter.name} installs {pins}, not the book's release {BRANCH}"


def test_repository_url_comes_from_config() -> None:
    assert CONFIG["repository"]["url"].rstrip("/") == URL
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"


def test_toc_lists_every_chapter() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    for chapter in CHAPTERS:
        assert f"book/{chapter.stem}" in files, f"{chapter.name} is not in _toc.yml"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_structure(chapter: Path) -> None:
    nb = _nb(chapter)
    md = _markdown(nb)
    assert "Learning objectives" in md
    assert re.search(r"^## Summary", md, re.M), f"{chapter.name} has no Summary section"
    labels = re.findall(r":::\{exercise\}[^\n]*\n:label: (\S+)", md)
    solved = re.findall(r":::\{solution\} (\S+)", md)
    assert 2 <= len(labels) <= 4, f"{chapter.name}: {len(labels)} exercises (want 2-4)"
    assert sorted(labels) == sorted(solved), f"{chapter.name}: exercises {labels} vs solutions {solved}"
    assert ":class: dropdown" in md
    reports = [c for c in _code_cells(nb) if "checks.report(checks.check_" in c]
    assert len(reports) == len(labels), f"{chapter.name}: every exercise needs a cell that runs its check"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapters_use_public_names_only(chapter: Path) -> None:
    code = "\n".join(_code_cells(_nb(chapter)))
    assert not re.search(r"from profit_edu[\w.]* import [^\n]*\b_\w", code)
    assert not re.search(r"\bpe\.(?:\w+\.)*_[a-z]\w*", code), "chapters import only public names"


def _solutions(chapter: Path) -> list[tuple[str, str]]:
    md = _markdown(_nb(chapter))
    found = []
    for label, body in re.findall(r":::\{solution\} (\S+)\n(.*?)\n:::", md, re.S):
        code = re.findall(r"```python\n(.*?)```", body, re.S)
        assert code, f"solution {label} has no python code block"
        found.append((label, "\n".join(code)))
    return found


SOLUTIONS = [(c, label, code) for c in CHAPTERS for label, code in _solutions(c)]


def _strict_checks() -> types.SimpleNamespace:
    """`checks` whose report() raises when the check fails, so a wrong solution fails the test."""

    def report(check, *args, **kwargs):
        assert check(*args, **kwargs) is True

    names = {n: getattr(checks, n) for n in checks.__all__ if n != "report"}
    return types.SimpleNamespace(**names, report=report)


@pytest.mark.parametrize(("chapter", "label", "code"), SOLUTIONS, ids=[s[1] for s in SOLUTIONS])
def test_solution_passes_its_check(chapter: Path, label: str, code: str) -> None:
    namespace = {"torch": torch, "F": F, "math": math, "json": json, "pe": pe, "checks": _strict_checks(),
                 "OFF": pe.quant.HSWISH_OFFSET}
    exec(compile(code, f"{chapter.name}:{label}", "exec"), namespace)


def test_every_citation_is_in_the_bibliography() -> None:
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    texts = [_markdown(_nb(c)) for c in CHAPTERS] + [p.read_text() for p in (ROOT / "book").glob("*.md")]
    cited = {k.strip() for t in texts for group in re.findall(r"\{cite:\w+\}`([^`]+)`", t) for k in group.split(",")}
    assert cited, "no citations found"
    assert cited <= keys, f"cited but not in references.bib: {sorted(cited - keys)}"
    for entry in re.split(r"\n(?=@)", bib.strip()):
        if entry.startswith("@"):
            for field in ("title", "author", "year"):
                assert re.search(rf"^\s*{field}\s*=", entry, re.M), f"{entry.splitlines()[0]} lacks {field}"


def test_book_config_is_offline_and_strict() -> None:
    sphinx = CONFIG["sphinx"]["config"]
    assert CONFIG["only_build_toc_files"] is True
    assert sphinx["nb_execution_raise_on_error"] is True
    assert all("://" not in k for k in sphinx["nb_ipywidgets_js"]), "widget scripts must be served by the book"
    assert "://" not in sphinx["mathjax_path"]
    assert sphinx["html_static_path"] == ["book/_offline"]
    assert not (ROOT / "_static").exists(), "JB1 would add every .js of a top-level _static/ to every page"
    assert "sphinx_exercise" in CONFIG["sphinx"]["extra_extensions"]
    assert 60 <= CONFIG["execute"]["timeout"] <= 600


# --------------------------------------------------------------------------------------------
# Numbers read from benchmarks/results: every id and path a chapter names exists there
# --------------------------------------------------------------------------------------------
LOOKUPS = {"ledger_value": 1, "ledger_record": 1, "ledger_history": 1, "source": 1, "benchmark_value": 2}


def _result_lookups(code: str, where: str) -> list[tuple[str, tuple[str, ...]]]:
    """(method, literal arguments) of every ``<x>.ledger_value("id")``-style call in ``code``.

    Raises AssertionError for a call whose id or path is not a literal string: a test must see it to check it.
    """
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOOKUPS:
            n = LOOKUPS[node.func.attr]
            args = node.args[:n]
            literal = len(args) == n and all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args)
            assert literal, (f"{where}: {node.func.attr}(...) must name its ledger id / benchmark path with string "
                             f"literals, so that this test can check them: {ast.unparse(node)}")
            found.append((node.func.attr, tuple(a.value for a in args)))
    return found


def test_result_lookups_see_literal_ids_and_refuse_others() -> None:
    code = 'res.ledger_value("a/b")\nx = res.benchmark_value("packed", "size/bits")\n'
    assert _result_lookups(code, "t") == [("ledger_value", ("a/b",)), ("benchmark_value", ("packed", "size/bits"))]
    with pytest.raises(AssertionError, match="string literals"):
        _result_lookups("res.ledger_value(name)", "t")


#: The assignments' student editions (what the book shows) read the ledger too.
ASSIGNMENTS = sorted((ROOT / "book" / "assignments").glob("[0-9][0-9]_*.ipynb"))
LEDGER_CHAPTERS = [c for c in CHAPTERS + ASSIGNMENTS if "results.Results" in "\n".join(_code_cells(_nb(c)))]


def test_some_chapter_reads_the_ledger_by_id() -> None:
    assert any(c.name.startswith("08_") for c in LEDGER_CHAPTERS), "chapter 8 reads its sizes and speeds by id"
    assert {"06", "07"} <= {c.name[:2] for c in LEDGER_CHAPTERS}, "chapters 6 and 7 read the accuracy results"


@pytest.mark.parametrize("chapter", LEDGER_CHAPTERS, ids=[p.stem for p in LEDGER_CHAPTERS])
def test_every_number_read_from_the_results_exists(chapter: Path) -> None:
    from profit_edu.book.results import Results

    code = "\n".join(c for c in _code_cells(_nb(chapter)) if not c.lstrip().startswith(("%", "!")))
    lookups = _result_lookups(code, chapter.name)
    assert lookups, f"{chapter.name} loads the results but reads nothing by id"
    names = sorted({args[0] for method, args in lookups if method == "benchmark_value"})
    res = Results.load(names)
    for method, args in lookups:
        if method == "benchmark_value":
            res.benchmark_value(*args)  # raises KeyError naming the missing key
        elif method == "ledger_history":
            lines = res.ledger_history(args[0])
            assert all(isinstance(r["value"], int | float) for r in lines), f"{chapter.name}: {args[0]}"
        else:
            rec = res.ledger_record(args[0])
            assert isinstance(rec["value"], int | float), f"{chapter.name}: ledger id {args[0]} has no number"
