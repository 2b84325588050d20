"""benchmarks/chapter_times.py: one ledger line per executed chapter, nothing for a chapter that fails."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import chapter_times  # noqa: E402

pytestmark = pytest.mark.slow  # starts two kernels


def _notebook(path: Path, code: str) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_each_chapter_that_runs_gets_a_line_and_a_failing_one_none(tmp_path, monkeypatch):
    book = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("PROFIT_EDU_LEDGER", str(book))
    good = _notebook(tmp_path / "01_good.ipynb", "x = list(range(10**6))")
    bad = _notebook(tmp_path / "02_bad.ipynb", "raise RuntimeError('this chapter fails')")
    assert chapter_times.main(["--threads", "1", "--out", str(tmp_path / "out"), str(good), str(bad)]) == 1
    (line,) = [json.loads(x) for x in book.read_text().splitlines()]
    assert (line["id"], line["scale"], line["mode"], line["threads"]) == ("book/chapter/01_good/quick", "quick",
                                                                          "quick", 1)
    assert line["value"] > 0 and 0.01 < line["peak_rss_gib"] < 16  # the runner and its kernel, in GiB
    assert line["command"] == f"python benchmarks/chapter_times.py --threads 1 {good}"  # outside the repository
    assert chapter_times._shown(ROOT / "book" / "05_aiwq.ipynb") == "book/05_aiwq.ipynb"
    assert (tmp_path / "out" / "01_good.ipynb").is_file()


def test_bad_arguments_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit):
        chapter_times.main(["--threads", "0", str(tmp_path / "x.ipynb")])
    with pytest.raises(SystemExit):
        chapter_times.main([str(tmp_path / "missing.ipynb")])
    assert "no such chapter" in capsys.readouterr().err
