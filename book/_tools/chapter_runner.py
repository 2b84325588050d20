"""Execute the book's chapters in quick mode, and build a book from the executed copies.

Used by the tests (``tests/notebooks/test_chapters.py`` executes every chapter, ``tests/book/test_browser.py``
opens the built pages in a headless browser) so that one pytest run executes each chapter once:

* :func:`execute_chapter` runs a chapter with nbclient (``PROFIT_EDU_QUICK=1``, a per-cell timeout) and
  writes the executed copy, outputs and widget state included, to ``_build/test-chapters/``. Within one
  Python process the result is remembered, so the second caller gets the same file without re-running.
* :func:`build_from_executed` builds the book strictly (``-W -n``) from those executed copies with
  execution switched off, which takes well under a minute instead of re-running every chapter.

Neither touches the committed chapters in ``book/``: they stay stripped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOOK = ROOT / "book"
EXECUTED = ROOT / "_build" / "test-chapters"
CELL_TIMEOUT_S = 300

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nbtool  # noqa: E402  (the sibling tool; this directory is not a package)


@dataclass(frozen=True)
class Executed:
    """An executed chapter: where its copy is and how long it took."""

    source: Path
    path: Path
    seconds: float


_DONE: dict[tuple[Path, bool], Executed] = {}


def chapters() -> list[Path]:
    return nbtool.chapters(BOOK)


def execute_chapter(path: Path, *, out_dir: Path = EXECUTED, timeout: int | None = CELL_TIMEOUT_S,
                    quick: bool = True) -> Executed:
    """Run ``path`` top to bottom in quick mode (``quick=False``: full mode); write the executed copy into ``out_dir``.

    ``timeout`` is per cell, in seconds (None: no limit, for full mode on a CPU).

    Raises:
        nbclient.exceptions.CellExecutionError: a cell failed (the message shows the cell and the traceback).
        nbclient.exceptions.CellTimeoutError: a cell ran longer than ``timeout`` seconds.
    """
    import nbformat
    from nbclient import NotebookClient

    path = path.resolve()
    if (path, quick) in _DONE:
        return _DONE[path, quick]
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(path.parent)}})
    saved = os.environ.get("PROFIT_EDU_QUICK")
    os.environ["PROFIT_EDU_QUICK"] = "1" if quick else "0"  # the kernel inherits the environment
    start = time.perf_counter()
    try:
        client.execute()
    finally:
        if saved is None:
            os.environ.pop("PROFIT_EDU_QUICK", None)
        else:
            os.environ["PROFIT_EDU_QUICK"] = saved
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    nbformat.write(nb, out)
    timings = out_dir / "timings.json"
    data = json.loads(timings.read_text()) if timings.exists() else {}
    data[path.name] = round(seconds, 1)
    timings.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    _DONE[path, quick] = Executed(path, out, seconds)
    return _DONE[path, quick]


def build_from_executed(dest: Path, executed: dict[str, Path]) -> Path:
    """Build the book into ``dest/_build/html`` from executed chapter copies, without executing anything.

    ``executed`` maps chapter file names (``02_uniform_quantization.ipynb``) to executed notebooks; the
    assignments' student editions are copied as committed (without outputs). The build uses the repository's
    ``_config.yml`` and ``_toc.yml`` with ``execute_notebooks: "off"`` and is as strict as ``make book``
    (``-W -n --keep-going``).

    Returns:
        The ``html`` folder.

    Raises:
        RuntimeError: the build failed (its output is in the message).
    """
    import yaml

    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(BOOK, dest / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints"))
    for name, nb_path in executed.items():
        shutil.copy(nb_path, dest / "book" / name)
    for nb_path in (BOOK / "assignments").glob("[0-9][0-9]_*.ipynb"):  # the assignments, as committed (not run)
        (dest / "book" / "assignments").mkdir(exist_ok=True)
        shutil.copy(nb_path, dest / "book" / "assignments" / nb_path.name)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config.setdefault("execute", {})["execute_notebooks"] = "off"
    (dest / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    shutil.copy(ROOT / "_toc.yml", dest / "_toc.yml")
    jb = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(jb if jb.exists() else "jupyter-book"), "build", "-W", "-n", "--keep-going", str(dest)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=dest)
    html = dest / "_build" / "html"
    if result.returncode != 0 or not (html / "index.html").exists():
        raise RuntimeError(f"book build failed ({' '.join(cmd)}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return html


def main(argv: list[str] | None = None) -> None:
    """``python book/_tools/chapter_runner.py [--full] [--out DIR] CHAPTER...``: execute chapters, print timings.

    Full mode (``--full``) runs each experiment at its real size (``PROFIT_EDU_QUICK=0``), without a cell
    time-out: minutes a chapter on a GPU, an hour or more on one CPU core.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("chapters", nargs="+", type=Path, help="notebooks to execute, e.g. book/05_aiwq.ipynb")
    parser.add_argument("--full", action="store_true", help="full mode (PROFIT_EDU_QUICK=0), no cell time-out")
    parser.add_argument("--out", type=Path, default=EXECUTED, help=f"where executed copies go (default {EXECUTED})")
    args = parser.parse_args(argv)
    for chapter in args.chapters:
        done = execute_chapter(chapter, out_dir=args.out, quick=not args.full,
                               timeout=None if args.full else CELL_TIMEOUT_S)
        print(f"{chapter.name}: {'full' if args.full else 'quick'} mode, {done.seconds:.0f} s -> {done.path}",
              flush=True)


if __name__ == "__main__":
    main()
