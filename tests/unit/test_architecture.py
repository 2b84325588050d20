"""The library's shape, as ARCHITECTURE.md draws it: imports flow one way, the core never imports the chapter
support (``profit_edu.book``), and no file is longer than a student reads in one sitting.

Imports are read from the source with ``ast`` (nothing is imported), including those inside functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "profit_edu"

#: The import layers, bottom first: a module may import modules of its own layer or of layers below it, never
#: above. A new top-level module goes here (and into ARCHITECTURE.md's map).
LAYERS: list[set[str]] = [
    {"_validate", "_paths", "grid", "atomic"},
    {"clip_init"},
    {"quant"},
    {"layers"},
    {"models", "checkpoint"},
    {"aiwq", "data", "ledger"},
    {"diagnostics"},
    {"freezing"},
    {"recipe", "schedule"},
    {"optim", "ema", "train", "distributed"},
    {"builders", "pipeline", "profit", "pretrained", "packed", "reproduce"},
    {"cli"},
    {"book"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}

MAX_LINES = 620  # "about 600"
#: Files allowed past the limit until they are split (ARCHITECTURE.md, "to be split").
TO_BE_SPLIT: set[str] = set()
MAX_FUNCTION_LINES = 60  # decorators, signature and docstring included
#: Functions allowed past it until they are broken into helpers (ARCHITECTURE.md, "to be split").
LONG_FUNCTIONS: dict[str, set[str]] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``: imports for annotations only, which run nothing."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING" for stmt in node.body for n in ast.walk(stmt)}


def _imports(path: Path) -> set[str]:
    """Every ``profit_edu...`` module or name that ``path`` imports at run time, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    type_only = _type_only(tree)
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
    return {m for m in found if m == "profit_edu" or m.startswith("profit_edu.")}


SOURCES = sorted(PACKAGE.rglob("*.py"))
TOP_LEVEL = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES} - {"__init__"}


def _top(module: str) -> str | None:
    """``profit_edu.data.cifar`` -> ``data``; ``profit_edu`` itself, or a name of it (``__version__``) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in TOP_LEVEL else None


CORE = [p for p in SOURCES if _top(_module_name(p)) != "book"]


def test_the_scan_sees_the_package():
    assert len(CORE) > 30 and any(p.parent.name == "book" for p in SOURCES)
    assert "profit_edu.layers" in _imports(PACKAGE / "models" / "_common.py")  # `from ..layers import ...`
    assert "profit_edu.quant" in _imports(PACKAGE / "book" / "checks.py")  # `from .. import quant`
    assert "profit_edu.atomic" in _imports(PACKAGE / "data" / "cifar.py")  # an import inside a function
    assert "profit_edu.recipe" not in _imports(PACKAGE / "freezing.py")  # `if TYPE_CHECKING:`, for annotations


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_never_imports_the_chapter_support(path):
    bad = sorted(m for m in _imports(path) if _top(m) == "book")
    assert not bad, f"{path.relative_to(PACKAGE)} imports {bad}: the core must not depend on profit_edu.book"


@pytest.mark.parametrize("path", [p for p in SOURCES if p != PACKAGE / "__init__.py"],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path):
    me = _top(_module_name(path))
    assert me in RANK, f"profit_edu.{me} has no place in LAYERS: add it here and to ARCHITECTURE.md's map"
    above = sorted({_top(m) for m in _imports(path)} - {None, me} - {t for t in RANK if RANK[t] <= RANK[me]})
    assert not above, (f"{path.relative_to(PACKAGE)} (layer {RANK[me]}) imports {above} from a higher layer: "
                       "move the shared code down, or the import up (see ARCHITECTURE.md)")


def test_the_package_root_imports_neither_the_command_line_nor_the_book():
    assert not {_top(m) for m in _imports(PACKAGE / "__init__.py")} & {"cli", "book"}


@pytest.mark.parametrize("path", [p for p in SOURCES if not (p.parent == PACKAGE and p.name in TO_BE_SPLIT)],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_file_is_longer_than_one_sitting(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines; split it by idea (STYLE.md 1)"


def _functions(path: Path) -> list[tuple[str, int]]:
    """(name, lines) of every function and method in ``path``, decorators and docstring included."""
    return [(node.name, node.end_lineno - min([node.lineno] + [d.lineno for d in node.decorator_list]) + 1)
            for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_a_screen(path):
    allowed = LONG_FUNCTIONS.get(path.relative_to(PACKAGE).as_posix(), set())
    long = [f"{name} ({n} lines)" for name, n in _functions(path) if n > MAX_FUNCTION_LINES and name not in allowed]
    assert not long, f"{path.relative_to(PACKAGE)}: {long}; break them into named helpers (STYLE.md 12)"


def test_the_exemptions_are_still_needed():
    for rel, names in LONG_FUNCTIONS.items():
        lengths = dict(_functions(PACKAGE / rel))
        assert all(lengths.get(n, 0) > MAX_FUNCTION_LINES for n in names), f"{rel}: drop the shortened {names}"
    for name in TO_BE_SPLIT:
        assert len((PACKAGE / name).read_text().splitlines()) > MAX_LINES, f"{name} is short now: drop it"
