"""profit_edu._paths: files outside the package come from arguments or environment variables, and from the source
checkout only when the library runs from one (an installed package has no ``../shared/data`` or ledger beside it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from profit_edu import _paths, data, ledger, pretrained

ROOT = Path(__file__).resolve().parents[2]
ENVS = (_paths.SHARED_DATA_ENV, data.CACHE_ENV, data.CIFAR10_ENV, ledger.LEDGER_ENV)


@pytest.fixture
def no_env(monkeypatch, tmp_path) -> Path:
    """No profit_edu environment variables; HOME and the working directory in ``tmp_path``."""
    for name in ENVS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_tests_run_from_a_source_checkout():
    assert _paths.source_checkout() == ROOT


def test_defaults_in_a_source_checkout(no_env):
    assert _paths.shared_data_dir() == ROOT.parent / "shared" / "data"
    assert data.default_cache_dir() == ROOT / "data" / "cache"
    assert ledger.default_path() == ROOT / "benchmarks" / "results" / "ledger.jsonl"


def test_defaults_of_an_installed_package(no_env, monkeypatch):
    monkeypatch.setattr(_paths, "source_checkout", lambda: None)
    assert _paths.shared_data_dir() is None
    assert data.default_cache_dir() == no_env / "home" / ".cache" / "profit_edu"
    assert ledger.default_path() == no_env / "benchmarks" / "results" / "ledger.jsonl"  # under the working dir
    with pytest.raises(FileNotFoundError) as info:
        data.cifar10(train=False)
    assert "offline copy" not in str(info.value) and str(ROOT) not in str(info.value)
    name = next(iter(pretrained.PRETRAINED))
    with pytest.raises(FileNotFoundError) as info:
        pretrained.pretrained_dir(name)
    assert str(ROOT) not in str(info.value)  # only the download cache was searched


def test_environment_variables_come_first(no_env, monkeypatch):
    for name, folder in ((_paths.SHARED_DATA_ENV, "shared"), (data.CACHE_ENV, "cache"),
                         (ledger.LEDGER_ENV, "ledger.jsonl")):
        monkeypatch.setenv(name, str(no_env / folder))
    assert _paths.shared_data_dir() == no_env / "shared"
    assert data.default_cache_dir() == no_env / "cache"
    assert ledger.default_path() == no_env / "ledger.jsonl"
