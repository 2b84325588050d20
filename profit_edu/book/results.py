"""Numbers a chapter reports but does not compute, read by id from the project's results, never typed.

Every accuracy, size or speed figure in the book is either computed by the cell that shows it or read from
``benchmarks/results/``:

* the **ledger** (``ledger.jsonl``, :mod:`profit_edu.ledger`): one JSON line per measured number, with the command,
  seed, commit and hardware behind it. It keeps every measurement, older ones included; a chapter shows the
  *newest* line of an id (:meth:`Results.ledger_record`, :meth:`Results.ledger_value`);
* a **benchmark's JSON file** (``<name>.json``, written by ``benchmarks/<name>.py``): the details behind its ledger
  lines (every part of a file's size, medians and quartiles of a timing). :meth:`Results.benchmark_value` reads one
  entry by a slash-separated path, e.g. ``benchmark_value("packed", "size/bits/4/file_bytes")``;
* **files the ledger names** beside it, e.g. a PROFIT run's AIWQ ranking (a line's ``ranking_file``,
  ``rankings/<...>.json``): :meth:`Results.read_json`.

An id measured again keeps its older lines: :meth:`Results.ledger_history` gives them all, oldest first (a chapter
shows a number before and after a fix that way), and :attr:`Results.all_lines` holds every line for queries over
many ids (:mod:`profit_edu.book.experiments` averages the accuracy benchmark's seeds from them).

Chapters call :meth:`~Results.ledger_value`, :meth:`~Results.ledger_record`, :meth:`~Results.ledger_history`,
:meth:`~Results.source` and :meth:`~Results.benchmark_value` with *literal* ids and paths, so a test
(``tests/notebooks/test_committed.py``) checks, without running any chapter, that every number a chapter displays
from the results exists there.

Where the files are (:meth:`Results.load`): the folder of the ledger that :func:`profit_edu.ledger.default_path`
names (``benchmarks/results/`` of the source checkout, or ``$PROFIT_EDU_LEDGER``'s folder). An installed package
(Colab) ships no results; ``download=True`` then fetches ``ledger.jsonl`` and the named benchmark files from the
repository (:data:`RESULTS_URL`) into the download cache, as :mod:`profit_edu.pretrained` does for checkpoints.

>>> res = Results([{"id": "a", "value": 1.0}, {"id": "a", "value": 2.0}], {"bench": {"size": {"4": 10}}})
>>> res.ledger_value("a"), res.benchmark_value("bench", "size/4")
(2.0, 10)
"""

from __future__ import annotations

import difflib
import json
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import ledger
from ..atomic import atomic_write_bytes
from ..data import default_cache_dir

__all__ = ["RESULTS_URL", "Results", "newest_by_id"]

#: The repository's ``benchmarks/results`` folder (its URL is the one in the book's ``_config.yml``; a test checks).
RESULTS_URL = "https://raw.githubusercontent.com/profit-edu/profit_edu/main/benchmarks/results"


def newest_by_id(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest (last) line of each id, in order of first appearance.

    >>> newest_by_id([{"id": "x", "value": 1}, {"id": "x", "value": 3}])["x"]["value"]
    3
    """
    out: dict[str, dict[str, Any]] = {}
    for rec in records:
        out[str(rec["id"])] = dict(rec)
    return out


def _fetch(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:  # https, or a test's file:// URL
            blob = response.read()
    except OSError as err:  # URLError and HTTPError are OSErrors
        raise FileNotFoundError(f"could not download {url}: {err}") from err
    atomic_write_bytes(target, blob)


class Results:
    """The ledger's lines (the newest per id, and all of them) and some benchmarks' JSON files, read once.

    Args:
        records: ledger lines (dicts with at least ``id`` and ``value``), oldest first.
        benchmarks: benchmark name -> its parsed JSON file.
        where: a short description of where the files came from (for :meth:`describe`; never an absolute path).
        folder: the folder the ledger was read from, for :meth:`read_json` (None: no files beside the records).
        base_url: where :meth:`read_json` downloads a file missing from ``folder`` (None: this copy's files only).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], benchmarks: Mapping[str, Any] | None = None, *,
                 where: str = "given records", folder: Path | None = None, base_url: str | None = None) -> None:
        self.lines = len(records)
        self.all_lines = [dict(r) for r in records]
        self.records = newest_by_id(records)
        self.benchmarks = dict(benchmarks or {})
        self.where = where
        self.folder = folder
        self.base_url = base_url

    @classmethod
    def load(cls, benchmarks: Sequence[str] = (), *, download: bool = False, base_url: str = RESULTS_URL,
             cache_dir: str | Path | None = None) -> Results:
        """Read the ledger and the named benchmark files (``benchmarks/results/<name>.json``).

        Args:
            benchmarks: benchmark names, e.g. ``("packed",)``.
            download: when this copy has no ledger (an installed package, Colab), fetch the files from
                ``base_url`` into ``<cache dir>/results/`` (once; later calls read the cached copies).
            base_url: where to download from.
            cache_dir: the download cache (default :func:`profit_edu.data.default_cache_dir`).

        Raises:
            FileNotFoundError: no ledger here and ``download`` is False (the message says what to do), a download
                failed, or a named benchmark file is missing.
        """
        path = ledger.default_path()
        folder, where, fetch_from = path.parent, "benchmarks/results/ (this copy of the project)", None
        if not path.is_file():
            if not download:
                raise FileNotFoundError("this copy of profit_edu has no benchmarks/results/ledger.jsonl (an installed "
                                        "package ships none): pass download=True to fetch the repository's results")
            folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
            folder = folder / "results"
            for name in ["ledger.jsonl", *[f"{b}.json" for b in benchmarks]]:
                if not (folder / name).is_file():
                    _fetch(f"{base_url}/{name}", folder / name)
            path, where = folder / "ledger.jsonl", "the repository's benchmarks/results/ (downloaded)"
            fetch_from = base_url
        loaded = {}
        for name in benchmarks:
            file = folder / f"{name}.json"
            if not file.is_file():
                raise FileNotFoundError(f"no benchmark results {name}.json beside the ledger: run benchmarks/{name}.py")
            loaded[name] = json.loads(file.read_text())
        return cls(ledger.read(path), loaded, where=where, folder=folder, base_url=fetch_from)

    # ---------------------------------------------------------------- the ledger
    def ledger_record(self, record_id: str) -> dict[str, Any]:
        """The newest ledger line with this id.

        Raises:
            KeyError: no line has this id (the message names the closest ids).
        """
        if record_id not in self.records:
            close = difflib.get_close_matches(record_id, list(self.records), n=3, cutoff=0.5)
            raise KeyError(f"the ledger has no line with id {record_id!r}; closest: {close}")
        return self.records[record_id]

    def ledger_value(self, record_id: str) -> float:
        """The ``value`` of the newest ledger line with this id (see :meth:`ledger_record`)."""
        return float(self.ledger_record(record_id)["value"])

    def ledger_history(self, record_id: str) -> list[dict[str, Any]]:
        """Every ledger line with this id, oldest first: the same measurement before and after a change.

        Raises:
            KeyError: no line has this id (the message names the closest ids).
        """
        self.ledger_record(record_id)  # the error message for an unknown id
        return [dict(r) for r in self.all_lines if str(r["id"]) == record_id]

    # ---------------------------------------------------------------- files beside the ledger
    def read_json(self, relative: str) -> Any:
        """A JSON file that a ledger line names relative to the ledger's folder, e.g. ``rankings/<...>.json``.

        Results downloaded into the cache fetch the file there once, from the same place as the ledger.

        Raises:
            ValueError: ``relative`` is absolute or leaves the folder (``..``).
            FileNotFoundError: these results have no folder, or the file is neither there nor downloadable.
        """
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts or not parts:
            raise ValueError(f"read_json takes a path inside the results folder, like 'rankings/x.json'; "
                             f"got {relative!r}")
        if self.folder is None:
            raise FileNotFoundError(f"these results were given as records, with no folder to read {relative!r} from")
        target = self.folder.joinpath(*parts)
        if not target.is_file() and self.base_url is not None:
            _fetch(f"{self.base_url}/{'/'.join(parts)}", target)
        if not target.is_file():
            raise FileNotFoundError(f"no {relative} beside the ledger ({self.where})")
        return json.loads(target.read_text())

    # ---------------------------------------------------------------- benchmark files
    def benchmark_value(self, name: str, path: str) -> Any:
        """One entry of a benchmark's JSON file: ``path`` is a slash-separated list of keys.

        Raises:
            KeyError: the benchmark was not loaded, or a key of the path is missing (the message lists the keys
                that exist at that level).
        """
        if name not in self.benchmarks:
            raise KeyError(f"benchmark {name!r} was not loaded; loaded: {sorted(self.benchmarks)} "
                           f"(Results.load(benchmarks=[{name!r}]))")
        node: Any = self.benchmarks[name]
        done = []
        for key in path.split("/"):
            if not isinstance(node, Mapping) or key not in node:
                have = sorted(node) if isinstance(node, Mapping) else type(node).__name__
                raise KeyError(f"{name}.json has no {'/'.join([*done, key])!r}; at {'/'.join(done) or 'the top'}: "
                               f"{have}")
            node = node[key]
            done.append(key)
        return node

    # ---------------------------------------------------------------- display
    def source(self, record_id: str) -> str:
        """One line saying where a ledger number comes from: id, hardware, date, scale and the command."""
        rec = self.ledger_record(record_id)
        return (f"ledger {record_id!r}: {rec.get('hardware', '?')}, {rec.get('date', '?')}, scale "
                f"{rec.get('scale', '?')}, command `{rec.get('command', '?')}`")

    def describe(self) -> str:
        """Where the results were read from, and how much the ledger holds (no absolute paths)."""
        return f"results: {self.where}, {self.lines} ledger lines, {len(self.records)} ids"
