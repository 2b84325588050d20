"""``profit-edu reproduce`` end to end on the CPU.

The central test starts two gloo processes with torchrun on a tiny ImageNet-layout folder, kills one of them in
the middle of a phase (after an epoch's checkpoint, before the phase ends), lets torchrun restart both, and checks
that the run finishes where one process with the same global batch ends: the same AIWQ ranking and frozen layers,
the same history, and the same weights up to float rounding. Both train in float64 (``--dtype float64``): the two
add the same numbers in another order, and in float32 a weight or an activation that sits on a rounding threshold
can round one way in one run and the other way in the other, after which quantized training drifts apart as two
seeds would; float64 leaves those last bits too small to tip a rounding.
The Tiny-ImageNet test runs the command on real JPEGs when the shared copy is there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from profit_edu import checkpoint as ckpt
from profit_edu.cli import main as cli_main
from profit_edu.data import ImageNetFolderError, check_imagenet_root
from profit_edu.distributed import World
from profit_edu.recipe import load_recipe
from profit_edu.reproduce import CRASH_ENV, add_arguments, make_loaders, prepare_recipe, reproduce
from profit_edu.train import TrainConfig, fit
from tests.imagenet_folder import TINY_RECIPE, make_imagenet_folder, write_recipe

ROOT = Path(__file__).resolve().parents[2]
TINY_IMAGENET = Path(os.environ.get("PROFIT_EDU_SHARED_DATA", ROOT.parent / "shared" / "data")) \
    / "tiny-imagenet-val.tar.gz"


def _args(*argv: str) -> argparse.Namespace:
    return add_arguments(argparse.ArgumentParser()).parse_args([*argv, "--device", "cpu", "--no-progress"])


def _float_start(recipe_path: Path, data: Path, out: Path, epochs: int) -> Path:
    """A float run of the recipe's model, trained briefly (PROFIT starts from a trained float network)."""
    recipe = prepare_recipe(load_recipe(recipe_path), data=data)
    m = recipe.model
    torch.manual_seed(0)
    model = m.build()
    train, val = make_loaders(recipe, World())
    meta = {"model_args": {"model": m.arch, "num_classes": m.num_classes, "width_mult": m.width_mult,
                           "cifar_stem": m.cifar_stem, "stem_stride": m.stem_stride, "weight_bits": None,
                           "act_bits": None}}
    fit(model, train, val, TrainConfig(epochs=epochs, lr=0.05, warmup_epochs=1, ema_decay=None), out_dir=out,
        meta=meta)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(recipe file, ImageNet folder, float start) shared by the tests of this module."""
    base = tmp_path_factory.mktemp("reproduce")
    data = make_imagenet_folder(base / "imagenet", classes=4, train=16, val=4, size=40)
    recipe = write_recipe(base / "tiny.yaml")
    return recipe, data, _float_start(recipe, data, base / "float", epochs=10)


def _torchrun(*argv: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", "1", "-m", "profit_edu.reproduce", *argv, "--device", "cpu", "--no-progress"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_processes_killed_and_resumed_end_where_one_process_ends(tiny, tmp_path):
    recipe, data, start = tiny
    one = reproduce(_args("--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "one"),
                          "--init", str(start), "--dtype", "float64"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", CRASH_ENV: "1:3"}  # rank 1 dies after w4_ft1's first epoch
    done = _torchrun("--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "two"), "--init",
                     str(start), "--dtype", "float64", env=env)
    if done.returncode != 0:
        (tmp_path / "torchrun.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    events = _events(tmp_path / "two")
    starts = [e for e in events if e["event"] == "start"]
    assert len(starts) == 2 and all(e["world_size"] == 2 for e in starts)  # it crashed, and torchrun restarted it
    epochs = [e["run_epoch"] for e in events if e["event"] == "epoch"]
    assert epochs[: epochs.index(3) + 1] == [0, 1, 2, 3] and epochs[-1] == 4  # resumed after epoch 3
    assert events[-1]["event"] == "finished"

    a, b = ckpt.load_checkpoint(tmp_path / "one"), ckpt.load_checkpoint(tmp_path / "two")
    ranking = [json.loads((d / "aiwq_ranking.json").read_text()) for d in (tmp_path / "one", tmp_path / "two")]
    assert [r["layer"] for r in ranking[0]["ranking"]] == [r["layer"] for r in ranking[1]["ranking"]]
    for r0, r1 in zip(ranking[0]["ranking"], ranking[1]["ranking"]):
        assert r1["aiwq"] == pytest.approx(r0["aiwq"], rel=1e-9, abs=1e-15)
    frozen = json.loads((tmp_path / "two" / "02_w4_ft1" / "done.json").read_text())["frozen"]
    assert frozen == list(one.phases[-1].frozen) and len(frozen) == 9  # floor(27 / 3)
    assert [h["val_top1"] for h in a.history] == [h["val_top1"] for h in b.history]
    for one_state, two_state in ((a.model_state, b.model_state), (a.ema_state, b.ema_state)):
        for key, value in one_state.items():
            tol = {"rtol": 1e-9, "atol": 1e-12} if value.dtype == torch.float64 else {"rtol": 1e-6, "atol": 1e-7}
            torch.testing.assert_close(two_state[key], value, **tol, msg=key)


@pytest.mark.slow
def test_one_process_with_amp_and_channels_last_trains_and_logs(tiny, tmp_path, capsys):
    recipe, data, start = tiny
    status = cli_main(["reproduce", "--recipe", str(recipe), "--data", str(data), "--out", str(tmp_path / "amp"),
                       "--init", str(start), "--amp", "--channels-last", "--device", "cpu", "--no-progress"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "[w4_ft1 2/2] val top-1" in printed and "images/s" in printed
    epochs = [e for e in _events(tmp_path / "amp") if e["event"] == "epoch"]
    assert [e["phase"] for e in epochs] == ["a4_ft", "a4_ft", "w4_sampling", "w4_ft1", "w4_ft1"]
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) and e["ema_val_top1"] is not None for e in epochs)
    assert epochs[-1]["replaced_images"] == 0 and epochs[-1]["global_batch"] == 16


def test_bad_input_is_refused_before_training(tiny, tmp_path, capsys):
    recipe, data, _ = tiny
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["reproduce", "--recipe", str(recipe), "--data", str(tmp_path / "missing"), "--out", str(out),
                  "--device", "cpu"])
    assert exit_info.value.code == 2
    assert "not found: pass the folder that holds train/ and val/" in capsys.readouterr().err
    other = write_recipe(tmp_path / "ten.yaml", TINY_RECIPE.replace("num_classes: 4", "num_classes: 10"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["reproduce", "--recipe", str(other), "--data", str(data), "--out", str(out), "--device", "cpu"])
    assert exit_info.value.code == 1
    assert "has 4 classes, but the model predicts 10" in capsys.readouterr().err
    assert not (out / "log.jsonl").exists()


def _tiny_imagenet(base: Path, classes: int, per_class: int = 50, val: int = 10) -> Path:
    """Some classes of the shared Tiny-ImageNet validation split, as train (the first images) and val (the rest)."""
    root = base / "tiny-imagenet"
    with tarfile.open(TINY_IMAGENET) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".JPEG")]
        wnids = sorted({m.name.split("/")[-2] for m in members})[:classes]
        for m in members:
            wnid = m.name.split("/")[-2]
            if wnid in wnids:
                m.name = Path(m.name).name
                tar.extract(m, root / "all" / wnid, filter="data")
    for wnid in wnids:
        images = sorted((root / "all" / wnid).iterdir())[:per_class]
        for i, image in enumerate(images):
            target = root / ("val" if i >= per_class - val else "train") / wnid / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            image.rename(target)
    return root


@pytest.mark.slow
@pytest.mark.skipif(not TINY_IMAGENET.is_file(), reason=f"the shared Tiny-ImageNet copy is not at {TINY_IMAGENET}")
def test_tiny_imagenet_real_jpegs(tmp_path):
    root = _tiny_imagenet(tmp_path, classes=5)
    assert check_imagenet_root(root, 5) == {"classes": 5, "train": 200, "val": 50}
    with pytest.raises(ImageNetFolderError, match="has 5 classes, but the model predicts 1000"):
        check_imagenet_root(root, 1000)
    text = TINY_RECIPE.replace("num_classes: 4", "num_classes: 5").replace("batch_size: 16", "batch_size: 40")
    recipe = write_recipe(tmp_path / "tiny5.yaml", text.replace("ft_epochs: 2", "ft_epochs: 1"))
    result = reproduce(_args("--recipe", str(recipe), "--data", str(root), "--out", str(tmp_path / "run")))
    history = [h for p in result.phases for h in p.history]
    assert len(history) == 3 and all(h["steps"] == 5 for h in history)  # 200 images, batches of 40
    assert all(0 <= h["val_top1"] <= 100 and torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
    assert ckpt.load_checkpoint(tmp_path / "run").meta["model_args"]["num_classes"] == 5
