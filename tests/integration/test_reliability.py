"""Issue 13: no command destroys a run, no input exhausts memory, every error is one clear line.

The harness (:func:`cli`) runs ``profit-edu`` in-process: an exception that escapes ``main`` (a traceback) fails the
test, and :func:`refused` checks the exit status, that stderr holds exactly one error line (argparse's usage lines
aside) matching the expected message, and no traceback. :func:`unchanged` checks that no file under the test's
folder was created, changed or removed. Every case of the issue that a command can meet is here; library-level cases
are in the unit tests of their modules (checkpoint, packed format, recipes, quantizers, models).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load as safetensors_load
from safetensors.torch import save_file

import profit_edu as pe
from profit_edu import atomic
from profit_edu.checkpoint import load_checkpoint, save_checkpoint
from profit_edu.cli import main
from profit_edu.packed.fileformat import _decompress_program, _digest, _serialize, _split, packed_bytes

MODEL_ARGS = {"model": "mobilenet_v2", "num_classes": 10, "width_mult": 0.25, "cifar_stem": True,
              "stem_stride": None, "negative_padding": False, "weight_bits": 4, "act_bits": 4}
TINY = ["--model", "mobilenet_v2", "--scale", "tiny", "--device", "cpu"]


# --------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    status: int
    out: str
    err: str


def cli(capsys, *argv: object) -> Result:
    """Run ``profit-edu argv`` in-process. Any exception but SystemExit propagates: a traceback fails the test."""
    capsys.readouterr()
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return Result(status, out, err)


def refused(result: Result, status: int, pattern: str) -> str:
    """Assert exit ``status`` and exactly one error line on stderr, matching ``pattern``; return that line."""
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines()
             if line.strip() and not line.startswith("usage:") and not line.startswith(" ")]  # argparse's usage
    assert len(lines) == 1, f"expected one error line, got:\n{result.err}"
    assert re.search(pattern, lines[0]), lines[0]
    assert result.status == status, (result.status, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root``: relative path -> sha256 of the content (or ``<dir>``)."""
    return {str(p.relative_to(root)): "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@contextlib.contextmanager
def unchanged(root: Path):
    """Assert that the block leaves every file under ``root`` as it was (nothing created, changed or removed)."""
    before = snapshot(root)
    yield
    after = snapshot(root)
    assert after == before, {"created": sorted(set(after) - set(before)),
                             "removed": sorted(set(before) - set(after)),
                             "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k])}


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or "write-test" in p.name]


# --------------------------------------------------------------------------------------------
# Inputs: a calibrated W4A4 model as a run, as a state dict + config, packed; an image
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sources")
    torch.manual_seed(0)
    net = pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True)
    pe.quantize_model(net, 4, 4)
    pe.calibrate(net, torch.randn(8, 3, 32, 32), bn="update")
    net.eval()
    save_checkpoint(root / "run", epoch=0, model=net, meta={"model_args": MODEL_ARGS,
                                                            "data": {"dataset": "cifar10", "seed": 0}})
    shutil.copytree(root / "run", root / "other")
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(root / "w.safetensors"))
    kwargs = {k: MODEL_ARGS[k] for k in ("num_classes", "width_mult", "cifar_stem", "stem_stride")}
    (root / "config.json").write_text(json.dumps({"builder": "mobilenet_v2", "kwargs": kwargs, "weight_bits": 4,
                                                  "act_bits": 4}))
    assert main(["pack", str(root / "run"), "-o", str(root / "m.pqm")]) == 0
    Image.new("RGB", (40, 48), (120, 30, 200)).save(root / "img.png")
    return root


@pytest.fixture
def work(tmp_path, sources) -> Path:
    shutil.copytree(sources, tmp_path, dirs_exist_ok=True)
    return tmp_path


def edited_run(work: Path, name: str, change) -> Path:
    """A copy of the run whose checkpoint.json was edited by ``change(doc)`` (its tensors still check out)."""
    run = work / name
    shutil.copytree(work / "run", run)
    doc = json.loads((run / "checkpoint.json").read_text())
    change(doc)
    (run / "checkpoint.json").write_text(json.dumps(doc))
    return run


def rewritten_pqm(blob: bytes, *, program=None, meta=None) -> bytes:
    """The packed file with its program JSON edited by ``program(doc)`` or its metadata updated, checksum valid."""
    header, _ = _split(blob)
    old_meta = header["__metadata__"]
    text = _decompress_program(old_meta["program"])
    if program is not None:
        doc = json.loads(text)
        program(doc)
        text = json.dumps(doc)
    tensors = safetensors_load(blob)
    new_meta = {**old_meta, "program": base64.b64encode(zlib.compress(text.encode())).decode()}
    new_meta |= {"sha256": _digest(text, _split(_serialize(tensors, new_meta))[1])} | (meta or {})
    return _serialize(tensors, new_meta)


# --------------------------------------------------------------------------------------------
# Data loss: nothing is written onto an input or over a run unless a flag says so
# --------------------------------------------------------------------------------------------
def test_release_onto_its_own_run_is_refused(capsys, work):
    with unchanged(work):
        refused(cli(capsys, "release", work / "run", "-o", work / "run"), 1,
                r"run is the run being released: writing the copy there would delete its training state")
        refused(cli(capsys, "release", work / "run", "-o", work / "run", "--overwrite"), 1,
                "is the run being released")
        refused(cli(capsys, "release", work / "run", "-o", work / "img.png"), 1,
                "img.png is an existing file; a release is a directory")


def test_release_onto_another_run_needs_overwrite(capsys, work):
    with unchanged(work):
        refused(cli(capsys, "release", work / "run", "-o", work / "other"), 1,
                r"other already holds a checkpoint .*choose another directory, or pass --overwrite")
    run_before = snapshot(work / "run")
    assert cli(capsys, "release", work / "run", "-o", work / "other", "--overwrite").status == 0
    assert snapshot(work / "run") == run_before
    assert load_checkpoint(work / "other").meta["released_from"]["copy"] == "model"


@pytest.mark.parametrize(("argv", "pattern"), [
    ("pack {w}/run/checkpoint.json -o {w}/run/checkpoint.json", r"-o .*run/checkpoint\.json is also an input"),
    ("pack {w}/run -o {w}/run/checkpoint.json", r"is also an input of this command \(.*run\)"),
    ("pack {w}/run -o {w}/run/checkpoint.json --overwrite", r"is also an input"),
    ("pack {w}/w.safetensors --config {w}/config.json -o {w}/w.safetensors", r"w\.safetensors is also an input"),
    ("pack {w}/w.safetensors --config {w}/config.json -o {w}/config.json", r"config\.json is also an input"),
    ("pack {w}/run -o {w}/other/checkpoint.json",
     r"is a file of the run in .*other: writing there would destroy that run; .*--overwrite"),
    ("pack {w}/run -o {w}/m2.pqm --onnx {w}/other/checkpoint.json", r"--onnx .*is a file of the run"),
    ("pack {w}/run -o {w}/m2.pqm --onnx {w}/m2.pqm", r"--onnx .*m2\.pqm is also the -o file"),
    ("pack {w}/run -o {w}/run", r"-o .*run is a directory; name the file to write, e\.g\. .*model\.pqm"),
])
def test_pack_never_writes_onto_an_input_or_a_run(capsys, work, argv, pattern):
    with unchanged(work):
        refused(cli(capsys, *argv.format(w=work).split()), 2, pattern)


def test_pack_over_a_run_file_with_overwrite_replaces_it(capsys, work):
    assert cli(capsys, "pack", work / "run", "-o", work / "other" / "checkpoint.json", "--overwrite").status == 0
    assert pe.packed.load_packed(work / "other" / "checkpoint.json").arch["builder"] == "mobilenet_v2"


def test_pack_into_a_directory_leaves_no_temporary_file(capsys, work):
    (work / "out").mkdir()
    with unchanged(work):
        refused(cli(capsys, "pack", work / "run", "-o", work / "out"), 2, r"out is a directory")
    assert temporaries(work) == []


def test_the_next_load_removes_what_a_killed_save_left(capsys, work):
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)  # a process that has exited
    host = atomic._host()
    left = [work / "run" / f".epoch-0001-0123456789ab.safetensors~{host}~{dead}~abcd1234.tmp",
            work / "run" / ".checkpoint.json.k2j4h5g6.tmp"]  # the second: named as earlier versions did
    alive = work / "run" / f".checkpoint.json~{host}~{os.getpid()}~zzzz9999.tmp"  # a writer still at work
    for p in (*left, alive):
        p.write_bytes(b"\0" * 4096)
    run_files = {p.name: p.read_bytes() for p in (work / "run").iterdir() if not p.name.endswith(".tmp")}
    assert cli(capsys, "pack", work / "run", "-o", work / "m2.pqm").status == 0
    assert not any(p.exists() for p in left) and alive.exists()
    assert {p.name: p.read_bytes() for p in (work / "run").iterdir() if not p.name.endswith(".tmp")} == run_files


# --------------------------------------------------------------------------------------------
# Resource exhaustion
# --------------------------------------------------------------------------------------------
def alias_bomb() -> str:
    """479 bytes of YAML: 9 levels of 9 aliases, 9**9 (387 million) strings once expanded."""
    rows = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    rows += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "\n".join(rows) + "\n"


def test_plan_refuses_an_alias_bomb_before_expanding_it(capsys, work):
    recipe = work / "bomb.yaml"
    recipe.write_text(alias_bomb())
    with unchanged(work):
        refused(cli(capsys, "plan", recipe), 2, r"bomb\.yaml:\d+: the recipe expands to more than 10,000 values")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels (and holds none): what Pillow reads before it decodes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [30000, 12000])  # past twice Pillow's limit (it refuses); past the limit (it warns)
def test_run_packed_refuses_a_decompression_bomb(capsys, work, side):
    (work / "bomb.png").write_bytes(png_header(side, side))
    with unchanged(work):
        refused(cli(capsys, "run-packed", work / "m.pqm", work / "bomb.png"), 2,
                rf"bomb\.png: too large to decode safely \(.*{side * side} pixels.*\); the limit is "
                rf"PIL\.Image\.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,} pixels")


# --------------------------------------------------------------------------------------------
# Silent corruption
# --------------------------------------------------------------------------------------------
def test_init_from_a_run_with_nan_weights_is_refused(capsys, work):
    torch.manual_seed(0)
    net = pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True, stem_stride=2)
    with torch.no_grad():
        net.features[3].conv[0][0].weight[0, 0, 0, 0] = float("nan")
    args = {**MODEL_ARGS, "stem_stride": 2, "weight_bits": None, "act_bits": None}
    save_checkpoint(work / "nan", epoch=0, model=net, meta={"model_args": args})
    with unchanged(work):
        result = cli(capsys, "train", *TINY, "--init", work / "nan", "--weight-bits", "4", "--act-bits", "4",
                     "--out", work / "new")
        refused(result, 2, r"--init .*nan: features\.3\.conv\.0\.0\.weight holds 1 NaN or inf values \(of 384\)")


def test_pack_refuses_class_names_that_do_not_fit_the_outputs(capsys, work):
    config = json.loads((work / "config.json").read_text())
    (work / "config.json").write_text(json.dumps({**config, "classes": [f"c{i}" for i in range(11)]}))
    with unchanged(work):
        refused(cli(capsys, "pack", work / "w.safetensors", "--config", work / "config.json", "-o", work / "m2.pqm"),
                2, r"--config .*: classes has 11 names, but the model has 10 outputs")


def test_run_packed_refuses_a_file_whose_class_names_do_not_fit(capsys, work):
    bad = rewritten_pqm((work / "m.pqm").read_bytes(), program=lambda d: d.update(classes=[f"c{i}" for i in range(11)]))
    (work / "bad.pqm").write_bytes(bad)
    with unchanged(work):
        refused(cli(capsys, "run-packed", work / "bad.pqm", work / "img.png"), 2,
                r"bad\.pqm: the packed program is invalid: classes has 11 names, but the model has 10 outputs")


# --------------------------------------------------------------------------------------------
# Tracebacks -> one line: Ctrl-C, disk full, read-only, an --out that is a file
# --------------------------------------------------------------------------------------------
def interrupt_at(monkeypatch, prefix: str) -> None:
    """Raise KeyboardInterrupt (as Ctrl-C does) when ``train`` prints a line starting with ``prefix``."""
    from profit_edu.cli import train as train_cli

    def say(text: str = "") -> None:
        if text.startswith(prefix):
            raise KeyboardInterrupt
        print(text, flush=True)

    monkeypatch.setattr(train_cli, "say", say)


def test_ctrl_c_during_train_says_where_the_checkpoint_is_and_how_to_resume(capsys, work, monkeypatch):
    run = work / "tiny"
    argv = ["train", *TINY, "--epochs", "2", "--out", str(run)]
    interrupt_at(monkeypatch, "epoch 1/2")  # after the first epoch's checkpoint is written
    line = refused(cli(capsys, *argv), 130, r"^profit-edu: interrupted; the last checkpoint is .*tiny/checkpoint\.json "
                                            r"\(after epoch 1\); resume with the same command: profit-edu train ")
    assert temporaries(work) == [] and load_checkpoint(run).epoch == 0
    monkeypatch.undo()
    command = shlex.split(line.split("resume with the same command: ")[1])
    assert command[1:] == argv
    resumed = cli(capsys, *command[1:])
    assert resumed.status == 0 and "epoch 2/2" in resumed.out and "epoch 1/2" not in resumed.out


def test_a_real_sigint_exits_130_with_the_resume_line(tmp_path):
    """The whole way: SIGINT (what Ctrl-C sends) to a ``python -m profit_edu.cli train`` process."""
    import signal
    import time

    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-m", "profit_edu.cli", "train", *TINY, "--epochs", "50", "--out",
                              str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoint.json").exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert re.match(r"profit-edu: interrupted; the last checkpoint is .*run/checkpoint\.json \(after epoch \d+\); "
                    r"resume with the same command: profit-edu train --model mobilenet_v2", line), line
    assert temporaries(tmp_path) == [] and load_checkpoint(run).epoch >= 0


def test_ctrl_c_before_the_first_checkpoint(capsys, work, monkeypatch):
    interrupt_at(monkeypatch, "profit-edu train:")
    refused(cli(capsys, "train", *TINY, "--out", work / "tiny", "--restart"), 130,
            r"interrupted; no checkpoint was written in .*tiny yet .*start again with: profit-edu train .*--restart")
    assert not (work / "tiny").exists()


def test_ctrl_c_in_other_commands_exits_130(capsys, work, monkeypatch):
    from profit_edu.cli import plan

    def interrupted(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(plan, "load_recipe", interrupted)
    with unchanged(work):
        refused(cli(capsys, "plan", "tiny"), 130, r"^profit-edu: interrupted$")


def test_disk_full_during_train_keeps_the_last_checkpoint(capsys, work, monkeypatch):
    from profit_edu.cli import train as train_cli

    full = {"now": False}
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if full["now"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    def say(text: str = "") -> None:
        full["now"] = full["now"] or text.startswith("epoch 1/2")  # the disk fills during the second epoch
        print(text, flush=True)

    monkeypatch.setattr(train_cli, "say", say)
    monkeypatch.setattr(os, "fsync", fsync)
    run = work / "tiny"
    result = cli(capsys, "train", *TINY, "--epochs", "2", "--out", run)
    monkeypatch.undo()
    refused(result, 1, r"^profit-edu: error: .*tiny/epoch-0001-[0-9a-f]{12}\.safetensors: No space left on device; "
                       r"the last checkpoint is .*tiny/checkpoint\.json \(after epoch 1\); resume with the same")
    assert temporaries(work) == [] and load_checkpoint(run).epoch == 0


def test_read_only_out_is_refused_before_training(capsys, work, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with unchanged(work):
        result = cli(capsys, "train", *TINY, "--out", work / "ro" / "run")
        refused(result, 2, rf"--out .*ro/run: cannot write in {re.escape(str(work))} \(Read-only file system\); "
                           "choose a writable location")
    assert "epoch" not in result.out


@pytest.mark.parametrize("error", [errno.EROFS, errno.ENOSPC, errno.EACCES])
@pytest.mark.parametrize("command", ["pack", "release"])
def test_pack_and_release_onto_a_full_or_read_only_disk(capsys, work, monkeypatch, command, error):
    def fail(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(tempfile, "mkstemp", fail)  # where every write starts (atomic.atomic_write_bytes)
    argv = ["pack", work / "run", "-o", work / "m2.pqm"] if command == "pack" else \
        ["release", work / "run", "-o", work / "rel"]
    prefix = "profit-edu pack: error: " if command == "pack" else "profit-edu: error: "
    with unchanged(work):
        refused(cli(capsys, *argv), 2 if command == "pack" else 1,
                rf"^{prefix}.*(m2\.pqm|rel/epoch-0000-[0-9a-f]{{12}}\.safetensors): {re.escape(os.strerror(error))}$")


@pytest.mark.parametrize(("out", "pattern"), [
    ("img.png", r"--out .*img\.png is an existing file; a run directory is a folder: choose another --out"),
    ("img.png/run", r"--out .*img\.png/run lies under .*img\.png, which is a file"),
    ("run", r"--out .*run is also the run this one starts from"),
])
def test_an_out_that_cannot_hold_the_run_is_refused_before_training(capsys, work, out, pattern):
    init = ["--init", str(work / "run")] if out == "run" else []
    with unchanged(work):
        result = cli(capsys, "train", *TINY, *init, "--out", work / out)
        refused(result, 2, pattern)
    assert "epoch" not in result.out


# --------------------------------------------------------------------------------------------
# Tracebacks -> one line: pack's input size and config
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", ["0", "-3", "5000"])
def test_pack_input_size_flag_is_checked(capsys, work, size):
    with unchanged(work):
        refused(cli(capsys, "pack", work / "run", "-o", work / "m2.pqm", "--input-size", size), 2,
                rf"--input-size: must be an integer in 1\.\.4096, got '{size}'")


@pytest.mark.parametrize(("change", "pattern"), [
    ({"input_size": 0}, r"input_size must be an int, or two ints \(H, W\), in 1\.\.4096, got 0"),
    ({"input_size": -3}, r"input_size must be .* got -3"),
    ({"input_size": [32, 32, 3]}, r"input_size must be .* got \[32, 32, 3\]"),
    ({"input_size": "32"}, r"input_size must be .* got '32'"),
    ({"mean": [0.5, 0.5]}, r"mean must be 3 finite numbers \(R, G, B\), got \[0\.5, 0\.5\]"),
    ({"std": [0.2, 0, 0.2]}, r"std must be 3 finite numbers \(R, G, B\), each > 0, got \[0\.2, 0, 0\.2\]"),
    ({"colour": "red"}, r"unknown key 'colour'; the keys are builder, weight_bits, act_bits \(required\)"),
    ({"builder": None}, r"builder must be one of mobilenet_v1, .*got None"),
    ({"weight_bits": 9}, r"weight_bits must be an integer bit width in 2\.\.8 .*got 9"),
    ({"act_bits": None}, r"act_bits must be an integer bit width .*got None"),
    ({"kwargs": {"num_clases": 10}}, r"mobilenet_v2\(\) got an unexpected keyword argument 'num_clases'"),
    ({"kwargs": {"num_classes": 10**9}}, r"kwargs num_classes must be at most 100000"),
    ({"classes": "cat dog"}, r"classes must be a list of class names \(strings\)"),
])
def test_pack_config_errors_name_the_field(capsys, work, change, pattern):
    config = {**json.loads((work / "config.json").read_text()), **change}
    (work / "config.json").write_text(json.dumps(config))
    with unchanged(work):
        refused(cli(capsys, "pack", work / "w.safetensors", "--config", work / "config.json", "-o", work / "m2.pqm"),
                2, r"^profit-edu pack: error: --config .*config\.json: " + pattern)


def test_pack_config_missing_key(capsys, work):
    (work / "config.json").write_text(json.dumps({"builder": "mobilenet_v2", "weight_bits": 4}))
    with unchanged(work):
        refused(cli(capsys, "pack", work / "w.safetensors", "--config", work / "config.json", "-o", work / "m2.pqm"),
                2, r"--config .*: missing key 'act_bits'")


# --------------------------------------------------------------------------------------------
# Tracebacks -> one line: recipes
# --------------------------------------------------------------------------------------------
def test_recipe_with_a_python_tag_runs_nothing(capsys, work):
    marker = work / "ran"
    recipe = work / "evil.yaml"
    recipe.write_text(f"version: 1\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    with unchanged(work):
        refused(cli(capsys, "plan", recipe), 2,
                r"evil\.yaml:2: the tag !!python/object/apply:os\.system would build a Python object; a recipe holds "
                "plain values only")
    assert not marker.exists()


def test_recipe_that_is_not_utf8(capsys, work):
    recipe = work / "latin1.yaml"
    recipe.write_bytes("version: 1\n# caf\u00e9\nname: x\n".encode("latin-1"))
    with unchanged(work):
        refused(cli(capsys, "plan", recipe), 2,
                r"latin1\.yaml:2: not UTF-8 text \(byte 0xe9 at offset 16\); save the recipe as UTF-8")


def test_recipe_yaml_errors_are_one_line(capsys, work):
    recipe = work / "broken.yaml"
    recipe.write_text("version: 1\nname: [x, y\n")
    with unchanged(work):
        refused(cli(capsys, "plan", recipe), 2, r"broken\.yaml:3:1: not valid YAML: expected ',' or '\]'")


# --------------------------------------------------------------------------------------------
# Tracebacks -> one line: hand-edited checkpoints, paths that are not files, packed headers
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "pattern"), [
    (lambda m: m.update(weight_bits=9),
     r"meta\.model_args\.weight_bits must be an integer bit width in 2\.\.8, or null \(float\), got 9"),
    (lambda m: m.update(width_mult=-1), r"meta\.model_args\.width_mult must be a number in \(0, 4\], got -1"),
    (lambda m: m.pop("num_classes"), r"meta\.model_args lacks num_classes"),
    (lambda m: m.update(num_classes=10**9), r"meta\.model_args\.num_classes must be an integer in 1\.\.100000"),
    (lambda m: m.update(stem_stride="2"), r"meta\.model_args\.stem_stride must be 1, 2 or null"),
    (lambda m: m.update(model="resnet50"), r"meta\.model_args\.model must be one of mobilenet_v1, "),
])
@pytest.mark.parametrize("command", ["evaluate", "pack"])
def test_hand_edited_model_args_are_named(capsys, work, change, pattern, command):
    run = edited_run(work, "edited", lambda doc: change(doc["meta"]["model_args"]))
    argv = ["evaluate", run] if command == "evaluate" else ["pack", run, "-o", work / "m2.pqm"]
    with unchanged(work):
        refused(cli(capsys, *argv), 2, r"edited/checkpoint\.json: " + pattern)


@pytest.mark.parametrize(("argv", "status", "pattern"), [
    (["evaluate", "/dev/null"], 1, r"no checkpoint at /dev/null: it is not a regular file \(a directory, device"),
    (["evaluate", "{work}"], 1, r"the directory holds no checkpoint\.json"),
    (["evaluate", "{work}/nowhere"], 1, r"nowhere: no such file or directory"),
    (["pack", "/dev/null", "-o", "{work}/m2.pqm"], 2, r"no checkpoint at /dev/null: it is not a regular file"),
    (["run-packed", "/dev/null", "{work}/img.png"], 2, r"/dev/null: not a regular file \(a directory, device or"),
    (["run-packed", "{work}", "{work}/img.png"], 2, r": not a regular file \(a directory, device or pipe\)"),
    (["run-packed", "{work}/nowhere.pqm", "{work}/img.png"], 2, r"nowhere\.pqm: no such file"),
])
def test_model_paths_that_are_not_files(capsys, work, argv, status, pattern):
    if not Path("/dev/null").exists() and "/dev/null" in argv:
        pytest.skip("no /dev/null here")
    with unchanged(work):
        refused(cli(capsys, *[a.format(work=work) for a in argv]), status, pattern)


def test_integer_version_in_a_packed_header(capsys, work):
    (work / "v.pqm").write_bytes(rewritten_pqm((work / "m.pqm").read_bytes(), meta={"version": 2}))
    with unchanged(work):
        line = refused(cli(capsys, "run-packed", work / "v.pqm", work / "img.png"), 2,
                       r"__metadata__\.version must be a string such as '2' \(safetensors metadata holds strings only\)"
                       r", got the int 2")
    assert "reads version 2 only" not in line


def test_every_case_leaves_a_working_model(capsys, work):
    """The inputs the cases above start from are sound: the refusals come from the bad part alone."""
    assert cli(capsys, "run-packed", work / "m.pqm", work / "img.png").status == 0
    assert packed_bytes(pe.packed.load_packed(work / "m.pqm")) == (work / "m.pqm").read_bytes()
    packed = cli(capsys, "pack", work / "w.safetensors", "--config", work / "config.json", "-o", work / "m2.pqm")
    load = pe.packed.load_packed
    assert packed.status == 0 and load(work / "m2.pqm").arch == load(work / "m.pqm").arch
