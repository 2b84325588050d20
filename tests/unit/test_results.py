"""profit_edu.book.results: the newest ledger line per id, benchmark entries by path, loading and downloading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from profit_edu import ledger
from profit_edu.book import results
from profit_edu.book.results import Results

ROOT = Path(__file__).resolve().parents[2]
LINES = [{"id": "packed/size/w4", "value": 10.0, "command": "old", "hardware": "cpu", "date": "d1", "scale": "tiny"},
         {"id": "packed/size/w2", "value": 5.0, "command": "c2"},
         {"id": "packed/size/w4", "value": 11.0, "command": "new", "hardware": "cpu", "date": "d2", "scale": "tiny"}]
BENCH = {"size": {"bits": {"4": {"file_bytes": 123}}}}


def test_the_newest_line_of_an_id_wins() -> None:
    res = Results(LINES, {"packed": BENCH})
    assert res.ledger_value("packed/size/w4") == 11.0
    assert res.ledger_record("packed/size/w4")["command"] == "new"
    assert res.lines == 3 and len(res.records) == 2
    assert "packed/size/w4" in res.source("packed/size/w4") and "`new`" in res.source("packed/size/w4")
    assert "3 ledger lines, 2 ids" in res.describe()


def test_unknown_ids_and_paths_say_what_exists() -> None:
    res = Results(LINES, {"packed": BENCH})
    with pytest.raises(KeyError, match=r"closest: \['packed/size/w4'"):
        res.ledger_record("packed/size/w3")
    assert res.benchmark_value("packed", "size/bits/4/file_bytes") == 123
    with pytest.raises(KeyError, match=r"no 'size/bits/3'; at size/bits: \['4'\]"):
        res.benchmark_value("packed", "size/bits/3/file_bytes")
    with pytest.raises(KeyError, match="was not loaded"):
        res.benchmark_value("latency", "x")


def test_load_reads_this_checkouts_results() -> None:
    res = Results.load(["packed"])
    newest = {}
    for rec in ledger.read():
        newest[rec["id"]] = rec["value"]
    assert res.records and all(res.ledger_value(i) == float(v) for i, v in newest.items())
    packed = json.loads((ROOT / "benchmarks" / "results" / "packed.json").read_text())
    assert res.benchmark_value("packed", "size/fp32_state_dict_bytes") == packed["size"]["fp32_state_dict_bytes"]
    assert str(ROOT) not in res.describe()  # never an absolute path in a chapter's output


def test_load_without_a_ledger_downloads_or_says_how(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ledger.LEDGER_ENV, str(tmp_path / "nowhere" / "ledger.jsonl"))
    with pytest.raises(FileNotFoundError, match="download=True"):
        Results.load()
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LINES))
    (remote / "packed.json").write_text(json.dumps(BENCH))
    res = Results.load(["packed"], download=True, base_url=remote.as_uri(), cache_dir=tmp_path / "cache")
    assert res.ledger_value("packed/size/w4") == 11.0 and "downloaded" in res.describe()
    assert (tmp_path / "cache" / "results" / "packed.json").is_file()
    with pytest.raises(FileNotFoundError, match=r"could not download .*latency\.json"):
        Results.load(["packed", "latency"], download=True, base_url=remote.as_uri(), cache_dir=tmp_path / "c2")
    (remote / "ledger.jsonl").unlink()  # the cached copy is used from now on
    again = Results.load(["packed"], download=True, base_url=remote.as_uri(), cache_dir=tmp_path / "cache")
    assert again.benchmark_value("packed", "size/bits/4/file_bytes") == 123


def test_download_url_is_the_books_repository() -> None:
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner_repo = url.removeprefix("https://github.com/").rstrip("/")
    assert results.RESULTS_URL == f"https://raw.githubusercontent.com/{owner_repo}/main/benchmarks/results"


def test_history_keeps_every_line_of_an_id_oldest_first() -> None:
    res = Results(LINES)
    assert [r["command"] for r in res.ledger_history("packed/size/w4")] == ["old", "new"]
    assert len(res.all_lines) == 3
    with pytest.raises(KeyError, match="closest"):
        res.ledger_history("packed/size/w3")


def test_read_json_reads_beside_the_ledger_and_downloads_into_the_cache(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    here = Results.load()
    name = sorted(p.name for p in (ROOT / "benchmarks" / "results" / "rankings").glob("*.json"))[0]
    assert here.read_json(f"rankings/{name}")["ranking"]
    for bad in ("/etc/passwd", "../ledger.jsonl", "rankings/../../x.json"):
        with pytest.raises(ValueError, match="inside the results folder"):
            here.read_json(bad)
    with pytest.raises(FileNotFoundError, match=r"no rankings/none\.json"):
        here.read_json("rankings/none.json")
    with pytest.raises(FileNotFoundError, match="given as records"):
        Results(LINES).read_json("rankings/x.json")
    monkeypatch.setenv(ledger.LEDGER_ENV, str(tmp_path / "nowhere" / "ledger.jsonl"))
    remote = tmp_path / "remote"
    (remote / "rankings").mkdir(parents=True)
    (remote / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in LINES))
    (remote / "rankings" / "r.json").write_text(json.dumps({"ranking": [1]}))
    res = Results.load(download=True, base_url=remote.as_uri(), cache_dir=tmp_path / "cache")
    assert res.read_json("rankings/r.json") == {"ranking": [1]}
    assert (tmp_path / "cache" / "results" / "rankings" / "r.json").is_file()
