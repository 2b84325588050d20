"""Keep the book's chapters committable: outputs stripped, and the same Colab install cell in each.

Chapters are ``book/NN_*.ipynb``. Before committing a chapter you edited in Jupyter, run::

    python book/_tools/nbtool.py strip      # remove outputs, execution counts, widget state; sync the install cell
    python book/_tools/nbtool.py check      # list what is wrong, exit 1 if anything (the tests run the same check)

The install cell is the first code cell of every chapter. It installs ``profit_edu`` only inside Colab,
from the repository and at the release named in ``_config.yml`` (``repository.url``, and ``branch``, which
holds the book's release tag, e.g. ``v0.1.0``: the one place either is written; the Colab buttons open the
chapters at the same tag). ``strip`` rewrites the cell from there, so changing the URL or the release means
editing ``_config.yml`` and running ``strip``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
INSTALL_MARKER = "# Colab only: install profit_edu"


def chapters(book: Path = BOOK) -> list[Path]:
    """The chapter notebooks, in order (``NN_name.ipynb``)."""
    return sorted(p for p in book.glob("[0-9][0-9]_*.ipynb"))


def repository(config: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """``(url, release)`` from ``_config.yml``'s ``repository`` section (``url`` and ``branch``, the release tag)."""
    import yaml

    data = yaml.safe_load(config.read_text())
    repo = data.get("repository") or {}
    url, branch = repo.get("url"), repo.get("branch")
    if not url or not branch:
        raise SystemExit(f"{config} needs repository.url and repository.branch (the book's release tag)")
    return str(url).rstrip("/"), str(branch)


def install_source(url: str, branch: str) -> str:
    """The first code cell of every chapter."""
    return (
        f"{INSTALL_MARKER}, at the release this book was\n"
        "# written for. Colab already has torch, ipywidgets, seaborn and\n"
        "# the rest: --no-deps keeps them exactly as they are.\n"
        "# Elsewhere this cell does nothing.\n"
        "import sys\n"
        "\n"
        'if "google.colab" in sys.modules:\n'
        "    import subprocess\n"
        "\n"
        f'    release = "git+{url}@{branch}"\n'
        '    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet",\n'
        '                    "--no-deps", f"profit-edu @ {release}"], check=True)'
    )


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def first_code_cell(nb: dict) -> dict | None:
    return next((c for c in nb.get("cells", []) if c.get("cell_type") == "code"), None)


def problems(path: Path, url: str, branch: str) -> list[str]:
    """Everything that keeps ``path`` from being committed as it is."""
    nb = json.loads(path.read_text())
    found = []
    for i, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "code":
            if cell.get("outputs"):
                found.append(f"{path.name}: cell {i} has outputs")
            if cell.get("execution_count") is not None:
                found.append(f"{path.name}: cell {i} has an execution count")
    if "widgets" in nb.get("metadata", {}):
        found.append(f"{path.name}: metadata holds widget state")
    first = first_code_cell(nb)
    if first is None or _source(first) != install_source(url, branch):
        found.append(f"{path.name}: the first code cell is not the Colab install cell for {url}@{branch}")
    return found


def strip(path: Path, url: str, branch: str) -> bool:
    """Strip outputs and sync the install cell in place; True when the file changed."""
    text = path.read_text()
    nb = json.loads(text)
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.get("metadata", {}).pop("execution", None)
    nb.get("metadata", {}).pop("widgets", None)
    first = first_code_cell(nb)
    if first is None or INSTALL_MARKER not in _source(first):
        new = {"cell_type": "code", "execution_count": None, "id": "colab-install", "metadata": {}, "outputs": [],
               "source": ""}
        idx = next((i for i, c in enumerate(nb["cells"]) if c.get("cell_type") == "code"), len(nb["cells"]))
        nb["cells"].insert(idx, new)
        first = new
    first["source"] = install_source(url, branch)
    first.setdefault("metadata", {})["tags"] = ["colab-install", "hide-input"]
    out = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if out != text:
        path.write_text(out)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["strip", "check"])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: every chapter in book/)")
    args = parser.parse_args(argv)
    url, branch = repository()
    paths = args.paths or chapters()
    if args.command == "strip":
        for p in paths:
            if strip(p, url, branch):
                print(f"stripped {p}")
        return 0
    found = [msg for p in paths for msg in problems(p, url, branch)]
    for msg in found:
        print(msg)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
