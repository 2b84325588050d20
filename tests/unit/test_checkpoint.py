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

from profit_edu import atomic, quantize_model, set_bits
from profit_edu import checkpoint as ck
from profit_edu.atomic import atomic_write_bytes
from profit_edu.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint
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


# --------------------------------------------------------------------------------------------
# Issue 13: what a killed save leaves is removed; a file that is not a checkpoint is named as such
# --------------------------------------------------------------------------------------------
def _exited_pid() -> int:
    """The id of a process that has exited (what a killed writer leaves in its temporary file's name)."""
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)


def _leftovers(directory, name: str = "checkpoint.json") -> dict[str, object]:
    host, dead = atomic._host(), _exited_pid()
    paths = {
        "dead writer": directory / f".{name}~{host}~{dead}~abcd1234.tmp",
        "earlier version": directory / f".{name}.k2j4h5g6.tmp",
        "live writer": directory / f".{name}~{host}~{os.getpid()}~live0000.tmp",
        "other machine, recent": directory / f".{name}~elsewhere~{dead}~abcd1234.tmp",
        "other machine, old": directory / f".{name}~faraway~{dead}~abcd1234.tmp",
        "not ours": directory / "notes.tmp",
    }
    for p in paths.values():
        p.write_bytes(b"\0" * 1000)
    old = paths["other machine, old"]
    os.utime(old, (old.stat().st_atime - 2 * atomic.STALE_AFTER_S, old.stat().st_mtime - 2 * atomic.STALE_AFTER_S))
    return paths


def _removed(paths) -> set[str]:
    return {what for what, p in paths.items() if not p.exists()}


@pytest.mark.parametrize("how", ["save", "load"])
def test_the_next_save_or_load_removes_what_a_killed_save_left(tmp_path, how):
    net = tiny_qnet()
    save_checkpoint(tmp_path, epoch=0, model=net)
    paths = _leftovers(tmp_path)
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith(".tmp")}
    if how == "save":
        save_checkpoint(tmp_path, epoch=1, model=net)
    else:
        assert load_checkpoint(tmp_path).epoch == 0
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if not p.name.endswith(".tmp")} == kept
    assert _removed(paths) == {"dead writer", "earlier version", "other machine, old"}  # a live writer's stays


def test_an_atomic_write_removes_only_its_own_leftovers(tmp_path):
    mine, other = _leftovers(tmp_path, "model.pqm"), _leftovers(tmp_path, "other.pqm")
    atomic_write_bytes(tmp_path / "model.pqm", b"x")
    assert _removed(mine) == {"dead writer", "other machine, old"}  # outside a run directory: no old-style names
    assert _removed(other) == set()


def test_a_save_killed_with_sigkill_leaves_a_temporary_file_the_next_load_removes(tmp_path):
    import signal
    import subprocess
    import sys

    script = (
        "import os, sys, time\n"
        "from profit_edu import atomic\n"
        "def stall(fd):\n"
        "    print('writing', flush=True); time.sleep(60)\n"  # the bytes are written; SIGKILL comes now
        "os.fsync = stall\n"
        "atomic.atomic_write_bytes(sys.argv[1], b'x' * 3_000_000)\n"
    )
    net = tiny_qnet()
    save_checkpoint(tmp_path, epoch=0, model=net)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    child = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "checkpoint.json")],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1 and left[0].stat().st_size == 3_000_000  # what the issue found: megabytes left behind
    assert load_checkpoint(tmp_path).epoch == 0
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_atomic_write_onto_a_directory_writes_nothing(tmp_path):
    (tmp_path / "out").mkdir()
    with pytest.raises(IsADirectoryError, match="out"):
        atomic_write_bytes(tmp_path / "out", b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as info:
        atomic_write_bytes(target, b"new" * 1000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"] and target.read_bytes() == b"old"


@pytest.mark.parametrize(("where", "match"), [
    ("/dev/null", r"no checkpoint at /dev/null: it is not a regular file \(a directory, device or pipe\)"),
    ("empty dir", r"the directory holds no checkpoint\.json"),
    ("json is a dir", r"checkpoint\.json is not a regular file"),
    ("nowhere", r"nowhere: no such file or directory"),
])
def test_paths_that_are_not_checkpoints_are_named(tmp_path, where, match):
    path = {"/dev/null": "/dev/null", "empty dir": tmp_path, "nowhere": tmp_path / "nowhere",
            "json is a dir": tmp_path}[where]
    if where == "json is a dir":
        (tmp_path / "checkpoint.json").mkdir()
    if where == "/dev/null" and not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null here")
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_oversized_json_and_a_replaced_tensor_file_are_not_read(tmp_path, monkeypatch):
    net = tiny_qnet()
    save_checkpoint(tmp_path, epoch=0, model=net)
    monkeypatch.setattr(ck, "MAX_JSON_BYTES", 100)
    with pytest.raises(CheckpointError, match=r"bytes, more than a checkpoint's JSON can \(100\)"):
        load_checkpoint(tmp_path)
    monkeypatch.undo()
    tensor_file(tmp_path).write_bytes(b"\0" * 10_000_000)
    read = []
    monkeypatch.setattr(type(tmp_path), "read_bytes", lambda self: read.append(self) or b"")
    with pytest.raises(CheckpointError, match="has 10000000 bytes but the checkpoint recorded"):
        load_checkpoint(tmp_path)
    assert read == []  # refused from its size, before reading it


def test_release_never_destroys_a_run(tmp_path):
    _, _, _, run = trained(tmp_path)
    other = tmp_path / "other"
    save_checkpoint(other, epoch=0, model=tiny_qnet(1))
    (tmp_path / "file").write_text("x")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="is the run being released"):
        ck.release_checkpoint(run, run, overwrite=True)
    with pytest.raises(CheckpointError, match="is the run being released"):
        ck.release_checkpoint(run / "checkpoint.json", tmp_path / "run" / ".")
    with pytest.raises(CheckpointError, match=r"already holds a checkpoint .*overwrite=True"):
        ck.release_checkpoint(run, other)
    with pytest.raises(CheckpointError, match="is an existing file"):
        ck.release_checkpoint(run, tmp_path / "file")
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    ck.release_checkpoint(run, other, overwrite=True)
    assert load_checkpoint(other).epoch == 3 and load_checkpoint(run).momentum  # replaced on request; run intact
