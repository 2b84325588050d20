"""Tests of profit_edu.checkpoint: round trip, strict validation with clear errors, atomic writes, no pickle."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save
from torch import nn

from profit_edu import checkpoint as ck
from profit_edu import quantize_model, set_bits
from profit_edu.checkpoint import CheckpointError, atomic_write_bytes, has_checkpoint, load_checkpoint, save_checkpoint
from profit_edu.train import ModelEMA, TrainConfig, make_optimizer


def tiny_qnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Hardswish(),
                        nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    return quantize_model(net, 4, 4)


def trained(tmp_path, steps: int = 2):
    """A quantized net, its EMA and optimizer after a few steps, saved to tmp_path / "run"."""
    net = tiny_qnet()
    ema = ModelEMA(net, decay=0.5)
    opt = make_optimizer(net, TrainConfig(lr=0.1))
    x, y = torch.randn(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        ema.update(net)
    run = tmp_path / "run"
    save_checkpoint(run, epoch=3, model=net, optimizer=opt, ema_model=ema.module,
                    history=[{"epoch": 3, "val_top1": 12.5, "bits": {"weight": 4}}],
                    config=TrainConfig(frozen=("0",)).to_dict(), meta={"model": "tiny", "width_mult": 0.5},
                    rng={"cpu": torch.get_rng_state()}, extra={"teacher.bn.running_mean": torch.ones(3)})
    return net, ema, opt, run


def tensor_file(run):
    return run / json.loads((run / "checkpoint.json").read_text())["tensors"]["file"]


def test_round_trip_restores_model_ema_momentum_and_metadata(tmp_path):
    net, ema, opt, run = trained(tmp_path)
    assert has_checkpoint(run) and not has_checkpoint(tmp_path)
    c = load_checkpoint(run)
    assert c.epoch == 3 and c.history[0]["val_top1"] == 12.5
    assert c.config["frozen"] == ["0"] and TrainConfig.from_dict(c.config).frozen == ("0",)
    assert c.meta == {"model": "tiny", "width_mult": 0.5}
    assert c.bits == {"0.weight_quant": 4, "2.quantizer": 4, "3.weight_quant": 4, "6.weight_quant": 4}
    assert torch.equal(c.rng["cpu"], torch.get_rng_state()) and c.rng["cpu"].dtype == torch.uint8
    assert torch.equal(c.extra["teacher.bn.running_mean"], torch.ones(3))

    net2 = tiny_qnet(seed=1)
    ema2 = ModelEMA(net2, decay=0.5)
    opt2 = make_optimizer(net2, TrainConfig(lr=0.1))
    c.restore(net2, ema_model=ema2.module, optimizer=opt2)
    for key, value in net.state_dict().items():
        assert torch.equal(net2.state_dict()[key], value), key
    for key, value in ema.state_dict().items():
        assert torch.equal(ema2.state_dict()[key], value), key
    params2 = dict(net2.named_parameters())
    for name, p in net.named_parameters():
        assert torch.equal(opt2.state[params2[name]]["momentum_buffer"], opt.state[p]["momentum_buffer"]), name
    # the restored quantizers count as initialised, so they do not re-initialise from the next batch
    assert all(q._ready for q in net2.modules() if hasattr(q, "_ready"))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    _, _, _, run = trained(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", forbidden)
    c = load_checkpoint(run / "checkpoint.json")  # the JSON file itself works as well as its folder
    c.restore(tiny_qnet())


def test_only_the_latest_tensor_file_is_kept(tmp_path):
    net = tiny_qnet()
    for epoch in range(3):
        save_checkpoint(tmp_path, epoch=epoch, model=net)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == [tensor_file(tmp_path).name]
    assert tensor_file(tmp_path).name.startswith("epoch-0002-")
    assert load_checkpoint(tmp_path).epoch == 2


def test_corrupted_tensor_file_is_detected(tmp_path):
    _, _, _, run = trained(tmp_path)
    path = tensor_file(run)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"sha256 does not match .* corrupted"):
        load_checkpoint(run)


def test_truncated_tensor_file_is_detected(tmp_path):
    _, _, _, run = trained(tmp_path)
    path = tensor_file(run)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"has 100 bytes .* truncated"):
        load_checkpoint(run)


def test_missing_tensor_file_and_missing_checkpoint(tmp_path):
    _, _, _, run = trained(tmp_path)
    tensor_file(run).unlink()
    with pytest.raises(CheckpointError, match=r"points to epoch-0003-.*\.safetensors, which does not exist"):
        load_checkpoint(run)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")


def _edit_json(run, change):
    doc = json.loads((run / "checkpoint.json").read_text())
    change(doc)
    (run / "checkpoint.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d.update(version=99), r"format version 99; this profit-edu reads version 1"),
    (lambda d: d.update(format="other"), "is not a profit-edu checkpoint"),
    (lambda d: d.pop("bits"), r"key 'bits' is missing"),
    (lambda d: d.update(epoch="3"), r"key 'epoch' should be"),
    (lambda d: d["tensors"].update(file="../evil.safetensors"), "must be a plain file name"),
])
def test_bad_json_fields_are_named(tmp_path, change, match):
    _, _, _, run = trained(tmp_path)
    _edit_json(run, change)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(run)


def test_broken_json_is_reported(tmp_path):
    _, _, _, run = trained(tmp_path)
    (run / "checkpoint.json").write_text('{"format": "profit-edu-checkpoint", "vers')
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_checkpoint(run)


def test_mismatched_model_keys_shapes_and_bits_are_named(tmp_path):
    _, _, _, run = trained(tmp_path)
    c = load_checkpoint(run)
    other = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Hardswish(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    quantize_model(other, 4, 4)
    with pytest.raises(CheckpointError, match=r"shape mismatches \[6.weight: checkpoint \(3, 4\) vs model \(5, 4\)"):
        c.restore(other)
    no_bias = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Hardswish(),
                            nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(4, 3))
    quantize_model(no_bias, 4, 4)
    with pytest.raises(CheckpointError, match=r"unexpected keys \['3.bias'\]"):
        c.restore(no_bias)
    with pytest.raises(CheckpointError, match=r"quantizer '0.weight_quant' has 3 bits in the model but 4"):
        c.restore(set_bits(tiny_qnet(), weight_bits=3))
    with pytest.raises(CheckpointError, match="quantizers do not match"):
        c.restore(nn.Sequential(nn.Linear(2, 2)))


def test_ema_and_momentum_mismatches_are_named(tmp_path):
    net = tiny_qnet()
    save_checkpoint(tmp_path, epoch=0, model=net)  # no EMA, no optimizer
    c = load_checkpoint(tmp_path)
    assert c.ema_state is None and c.momentum == {}
    with pytest.raises(CheckpointError, match="holds no EMA model"):
        c.restore(tiny_qnet(), ema_model=tiny_qnet())
    c.momentum = {"6.weight": torch.zeros(3, 4), "nope.weight": torch.zeros(1)}
    fresh = tiny_qnet(seed=5)
    weight = fresh[0].weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"momentum buffer 'nope.weight' names no parameter"):
        c.restore(fresh, optimizer=make_optimizer(fresh, TrainConfig()))
    assert torch.equal(fresh[0].weight, weight)  # checked before anything was copied
    c.momentum = {"6.weight": torch.zeros(4, 3)}
    with pytest.raises(CheckpointError, match=r"momentum buffer '6.weight' has shape \(4, 3\)"):
        c.restore(fresh, optimizer=make_optimizer(fresh, TrainConfig()))
    with pytest.raises(CheckpointError, match="belongs to a parameter the optimizer lacks"):
        c.restore(fresh, optimizer=torch.optim.SGD(fresh[0].parameters(), lr=0.1))


def test_unknown_tensor_prefix_is_named(tmp_path):
    net = tiny_qnet()
    save_checkpoint(tmp_path, epoch=0, model=net)
    blob = save({"model/0.weight": torch.zeros(1), "mystery/x": torch.zeros(1)})
    path = tensor_file(tmp_path)
    path.write_bytes(blob)
    _edit_json(tmp_path, lambda d: d["tensors"].update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob)))
    with pytest.raises(CheckpointError, match=r"tensor key 'mystery/x' has no known prefix"):
        load_checkpoint(tmp_path)


def test_json_values_are_checked_and_nan_becomes_null(tmp_path):
    net = tiny_qnet()
    with pytest.raises(TypeError, match=r"meta.when: cannot store a object"):
        save_checkpoint(tmp_path, epoch=0, model=net, meta={"when": object()})
    save_checkpoint(tmp_path, epoch=0, model=net, history=[{"train_loss": float("nan")}])
    assert load_checkpoint(tmp_path).history == [{"train_loss": None}]
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        save_checkpoint(tmp_path, epoch=-1, model=net)


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
def test_atomic_write_leaves_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write_bytes(target, b"old")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # no temporary file left behind


def test_atomic_write_never_shows_a_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    real_fsync = os.fsync
    seen = []

    def spy(fd):  # runs after the bytes are written, before the rename: the target must not exist yet
        seen.append(target.exists())
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    atomic_write_bytes(target, b"x" * 10_000)
    assert seen and seen[0] is False
    assert target.read_bytes() == b"x" * 10_000


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint_loadable(tmp_path, monkeypatch):
    net = tiny_qnet()
    save_checkpoint(tmp_path, epoch=0, model=net)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    calls = []
    real = ck.atomic_write_bytes

    def fail_on_json(path, data):
        calls.append(path.name)
        if path.name == "checkpoint.json":
            raise KeyboardInterrupt  # e.g. the user stops the run while the JSON is written
        real(path, data)

    monkeypatch.setattr(ck, "atomic_write_bytes", fail_on_json)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, epoch=1, model=net)
    assert calls[0].startswith("epoch-0001-")  # the tensors were written first ...
    c = load_checkpoint(tmp_path)  # ... but the JSON still names epoch 0, which is complete
    assert c.epoch == 0
    for name, data in before.items():
        assert (tmp_path / name).read_bytes() == data
