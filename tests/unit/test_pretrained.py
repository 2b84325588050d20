"""Released checkpoints (weights only) and the shipped pretrained registry: lookup, download, sha256 pinning."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from profit_edu import _paths, models, pretrained
from profit_edu.checkpoint import CheckpointError, load_checkpoint, release_checkpoint, save_checkpoint
from profit_edu.cli import main
from profit_edu.train import ModelEMA

ROOT = Path(__file__).resolve().parents[2]
ARGS = {"model": "mobilenet_v2", "num_classes": 10, "width_mult": 0.25, "cifar_stem": True, "stem_stride": 2,
        "negative_padding": False, "weight_bits": None, "act_bits": None}


def _tiny_run(directory: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.mobilenet_v2(10, width_mult=0.25, cifar_stem=True, stem_stride=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    opt.step()
    ema = ModelEMA(model, 0.5)
    with torch.no_grad():
        next(ema.module.parameters()).add_(1.0)  # make the EMA copy differ from the model
    save_checkpoint(directory, epoch=2, model=model, optimizer=opt, ema_model=ema.module,
                    history=[{"epoch": 0}, {"epoch": 1}, {"epoch": 2}], meta={"model_args": ARGS},
                    rng={"cpu": torch.get_rng_state()})
    return model


def test_release_keeps_the_weights_only_and_loads_like_a_run(tmp_path):
    model = _tiny_run(tmp_path / "run")
    release_checkpoint(tmp_path / "run", tmp_path / "rel")
    state = load_checkpoint(tmp_path / "rel")
    assert state.momentum == {} and state.rng == {} and state.ema_state is None
    assert all(torch.equal(state.model_state[k], v) for k, v in model.state_dict().items())
    assert state.epoch == 2 and len(state.history) == 3 and state.meta["model_args"] == ARGS
    assert state.meta["released_from"]["copy"] == "model"
    for line in (tmp_path / "rel" / "SHA256SUMS").read_text().splitlines():  # sha256sum -c would pass
        digest, name = line.split("  ")
        assert hashlib.sha256((tmp_path / "rel" / name).read_bytes()).hexdigest() == digest
    full = load_checkpoint(tmp_path / "run")
    release_checkpoint(tmp_path / "run", tmp_path / "rel-ema", use_ema=True)
    assert all(torch.equal(v, full.ema_state[k]) for k, v in load_checkpoint(tmp_path / "rel-ema").model_state.items())


def test_release_without_ema_weights_is_refused(tmp_path):
    model = models.mobilenet_v2(10, width_mult=0.25)
    save_checkpoint(tmp_path / "run", epoch=0, model=model)
    with pytest.raises(CheckpointError, match="no EMA weights"):
        release_checkpoint(tmp_path / "run", tmp_path / "rel", use_ema=True)


def test_release_command(tmp_path, capsys):
    _tiny_run(tmp_path / "run")
    assert main(["release", str(tmp_path / "run"), "-o", str(tmp_path / "rel")]) == 0
    assert "sha256" in capsys.readouterr().out and load_checkpoint(tmp_path / "rel").momentum == {}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """A registry holding one tiny released checkpoint, served from a file:// 'repository'."""
    _tiny_run(tmp_path / "run")
    served = tmp_path / "repo" / "data" / "pretrained"
    release_checkpoint(tmp_path / "run", served / "tiny")
    sha = json.loads((served / "tiny" / "checkpoint.json").read_text())["tensors"]["sha256"]
    entry = pretrained.Pretrained("tiny", ARGS, sha, "pretrained/tiny/top1")
    monkeypatch.setattr(pretrained, "PRETRAINED", {"tiny": entry})
    monkeypatch.setattr(_paths, "source_checkout", lambda: None)  # as an installed package: no data/pretrained
    return served


def test_pretrained_downloads_verifies_and_loads(registry, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="download=True"):
        pretrained.pretrained_dir("tiny", cache_dir=cache)
    directory = pretrained.pretrained_dir("tiny", download=True, base_url=registry.as_uri(), cache_dir=cache)
    assert directory == cache / "pretrained" / "tiny"
    assert pretrained.pretrained_dir("tiny", cache_dir=cache) == directory  # found in the cache next time
    model = pretrained.load_pretrained("tiny", cache_dir=cache)
    expected = load_checkpoint(registry / "tiny").model_state
    assert not model.training and all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_pretrained_refuses_a_file_that_is_not_the_pinned_one(registry, tmp_path, monkeypatch):
    entry = pretrained.PRETRAINED["tiny"]
    monkeypatch.setitem(pretrained.PRETRAINED, "tiny", pretrained.Pretrained("tiny", ARGS, "0" * 64, entry.ledger_id))
    with pytest.raises(CheckpointError, match="pinned sha256"):
        pretrained.pretrained_dir("tiny", download=True, base_url=registry.as_uri(), cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "pretrained" / "tiny" / "checkpoint.json").exists()
    with pytest.raises(KeyError, match="shipped"):
        pretrained.pretrained_dir("nope")


def test_download_url_is_the_books_repository():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner_repo = url.removeprefix("https://github.com/").rstrip("/")
    assert pretrained.BASE_URL == f"https://raw.githubusercontent.com/{owner_repo}/main/data/pretrained"


@pytest.mark.parametrize("name", sorted(pretrained.PRETRAINED))
def test_shipped_checkpoint_matches_its_pin_and_ledger_line(name):
    entry = pretrained.PRETRAINED[name]
    if not (ROOT / "data" / "pretrained" / name).is_dir():
        pytest.skip(f"data/pretrained/{name} is not in this checkout")
    directory = pretrained.pretrained_dir(name)
    from profit_edu import ledger

    lines = [r for r in ledger.read() if r["id"] == entry.ledger_id]
    assert lines, f"no ledger line {entry.ledger_id}"
    assert lines[-1]["sha256"] == entry.sha256
    assert load_checkpoint(directory).meta["model_args"] == entry.model_args
