"""Numbers a chapter reports but does not compute, read by id from the project's results, never typed.

Every accuracy, size or speed figure in the book is either computed by the cell that shows it or read from
``benchmarks/results/``:

* the **ledger** (``ledger.jsonl``, :mod:`profit_edu.ledger`): one JSON line per measured number, with the command,
  seed, commit and hardware behind it. It keeps every measurement, older ones included; a chapter shows the
  *newest* line of an id (:meth:`Results.ledger_record`, :meth:`Results.ledger_value`);
* a **benchmark's JSON file** (``<name>.json``, written by ``benchmarks/<name>.py``): the details behind its ledger
  lines (every part of a file's size, medians and quartiles of a timing). :meth:`Results.benchmark_value` reads one
  entry by a slash-separated path, e.g. ``benchmark_value("packed", "size/bits/4/file_bytes")``.

Chapters call these three methods with *literal* ids and paths, so a test (``tests/notebooks/test_committed.py``)
checks, without running any chapter, that every number a chapter displays from the results exists there.

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
from ..checkpoint import atomic_write_bytes
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
    """The ledger's newest line per id and some benchmarks' JSON files, read once.

    Args:
        records: ledger lines (dicts with at least ``id`` and ``value``), oldest first.
        benchmarks: benchmark name -> its parsed JSON file.
        where: a short description of where the files came from (for :meth:`describe`; never an absolute path).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]], benchmarks: Mapping[str, Any] | None = None, *,
                 where: str = "given records") -> None:
        self.lines = len(records)
        self.records = newest_by_id(records)
        self.benchmarks = dict(benchmarks or {})
        self.where = where

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
        folder, where = path.parent, "benchmarks/results/ (this copy of the project)"
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
        loaded = {}
        for name in benchmarks:
            file = folder / f"{name}.json"
            if not file.is_file():
                raise FileNotFoundError(f"no benchmark results {name}.json beside the ledger: run benchmarks/{name}.py")
            loaded[name] = json.loads(file.read_text())
        return cls(ledger.read(path), loaded, where=where)

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
