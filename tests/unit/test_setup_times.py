"""benchmarks/setup_times.py and the README sentence results_page.py makes from its ledger lines."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import results_page  # noqa: E402
import setup_times  # noqa: E402


def test_pytest_counts_reads_the_summary_line():
    out = "tests/a.py ....\n==== 1273 passed, 2 skipped, 1 error in 581.20s (0:09:41) ====\n"
    assert setup_times.pytest_counts(out) == {"passed": 1273, "skipped": 2, "error": 1}
    assert setup_times.pytest_counts("no summary here\n") == {}


def _line(target: str, value: float, **extra: object) -> dict[str, object]:
    return {"id": f"setup/make-{target}", "date": "2026-12-06", "hardware": "2-core CPU", "value": value,
            "load_average_before": [0.4, 0.5, 0.6], "load_average_after": [2.5, 2.0, 1.0], **extra}


def test_readme_sentence_comes_from_the_newest_lines():
    records = [_line("install", 50.0), _line("test", 999.0, tests={"passed": 1}),
               _line("install", 130.0), _line("test", 630.0, tests={"passed": 1273, "skipped": 2})]
    text = results_page.setup_times(records)
    assert "`make install` 2 min" in text and "`make test` 10 min" in text
    assert "1,273 passed, 2 skipped" in text and "load average up to 2.5" in text and "2026-12-06" in text


def test_readme_says_when_times_are_not_measured():
    assert "not measured yet" in results_page.setup_times([_line("install", 50.0)])


def test_a_failing_command_stops_with_its_output(tmp_path: Path):
    (tmp_path / "Makefile").write_text("test:\n\t@echo broken >&2; exit 3\n")
    with pytest.raises(SystemExit, match=r"(?s)make test failed \(exit 2\).*broken"):
        setup_times.timed("test", tmp_path, dict(os.environ))
