"""The ``profit-edu`` command: help texts, argument errors, and a tiny train -> resume -> evaluate round trip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch

from profit_edu import __version__
from profit_edu.checkpoint import load_checkpoint
from profit_edu.cli import SCALES, main


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``profit-edu argv`` in-process; return (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


# --------------------------------------------------------------------------------------------
# Help and version
# --------------------------------------------------------------------------------------------
def test_top_level_help_lists_the_commands(capsys):
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0
    assert "PROFIT" in out and "train" in out and "evaluate" in out
    status, out, _ = run_cli(capsys)  # no command: the same help, exit 0
    assert status == 0 and "COMMAND" in out


def test_version(capsys):
    status, out, _ = run_cli(capsys, "--version")
    assert status == 0 and out.strip() == f"profit-edu {__version__}"


def test_train_help_explains_scales_bits_and_resuming(capsys):
    status, out, _ = run_cli(capsys, "train", "--help")
    assert status == 0
    for name in SCALES:
        assert f"  {name} " in out
    flat = " ".join(out.split())
    assert "synthetic images made on the fly" in flat and "CIFAR-10 subset" in flat and "meant for a GPU" in flat
    assert "integer in 2..8" in flat and "Leave a flag out to keep that part in floating point" in flat
    assert "resumes from the last checkpoint" in flat
    for flag in ("--model", "--dataset", "--scale", "--weight-bits", "--act-bits", "--seed", "--out", "--epochs",
                 "--lr", "--batch-size", "--width-mult", "--cifar-stem", "--stem-stride", "--device", "--init",
                 "--progress"):
        assert flag in out, flag


def test_evaluate_help(capsys):
    status, out, _ = run_cli(capsys, "evaluate", "--help")
    assert status == 0 and "CHECKPOINT_DIR" in out and "top-1 and top-5" in " ".join(out.split())


# --------------------------------------------------------------------------------------------
# Bad arguments: exit 2 with a message that says what is allowed
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("extra", "message"), [
    (["--weight-bits", "1"], r"--weight-bits: must be an integer bit width in 2..8 \(omit the flag for float\)"),
    (["--act-bits", "9"], r"--act-bits: must be an integer bit width in 2..8"),
    (["--weight-bits", "four"], r"2..8 .*got 'four'"),
    (["--epochs", "0"], r"--epochs: must be an integer >= 1"),
    (["--lr", "-0.1"], r"--lr: must be a number > 0"),
    (["--ema-decay", "1.5"], r"--ema-decay: must be a number in \[0, 1\), or 'none'"),
    (["--device", "gpu"], r"--device: must be a torch device"),
    (["--scale", "huge"], r"--scale: invalid choice: 'huge'"),
    (["--stem-stride", "3"], r"--stem-stride: invalid choice"),
])
def test_bad_train_arguments_exit_2_with_a_message(capsys, tmp_path, extra, message):
    status, _, err = run_cli(capsys, "train", "--model", "mobilenet_v2", "--out", str(tmp_path), *extra)
    assert status == 2
    assert re.search(message, err), err


def test_missing_and_unknown_model(capsys, tmp_path):
    status, _, err = run_cli(capsys, "train", "--out", str(tmp_path))
    assert status == 2 and "one of the arguments --model --recipe is required" in err
    status, _, err = run_cli(capsys, "train", "--model", "resnet50", "--out", str(tmp_path))
    assert status == 2 and "invalid choice: 'resnet50'" in err


def test_errors_found_after_parsing_also_exit_2(capsys, tmp_path):
    status, _, err = run_cli(capsys, "train", "--model", "mobilenet_v2", "--negative-padding", "--out",
                             str(tmp_path / "a"))
    assert status == 2 and "--negative-padding applies to MobileNet-v3 only" in err
    status, _, err = run_cli(capsys, "train", "--model", "mobilenet_v2", "--init", str(tmp_path / "nowhere"),
                             "--out", str(tmp_path / "b"))
    assert status == 2 and "--init" in err and "no checkpoint at" in err
    if not torch.cuda.is_available():
        status, _, err = run_cli(capsys, "train", "--model", "mobilenet_v2", "--device", "cuda", "--out",
                                 str(tmp_path / "c"))
        assert status == 2 and "no CUDA GPU is available" in err


def test_evaluate_of_a_missing_or_damaged_run_exits_1(capsys, tmp_path):
    status, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert status == 1 and "no checkpoint at" in err
    (tmp_path / "checkpoint.json").write_text("{not json")
    status, _, err = run_cli(capsys, "evaluate", str(tmp_path))
    assert status == 1 and "is not valid JSON" in err


# --------------------------------------------------------------------------------------------
# A tiny run end to end
# --------------------------------------------------------------------------------------------
TINY = ["--scale", "tiny", "--device", "cpu"]


def test_tiny_train_resume_evaluate_and_init(capsys, tmp_path, monkeypatch):
    fp_run, q_run = tmp_path / "fp", tmp_path / "w4a4"
    status, out, err = run_cli(capsys, "train", "--model", "mobilenet_v2", *TINY, "--seed", "1", "--out", str(fp_run))
    assert status == 0, err
    assert "on synthetic (256 train / 128 test images)" in out and "epoch 1/1" in out and "test top-1" in out
    c = load_checkpoint(fp_run)
    assert c.epoch == 0 and c.bits == {}
    assert c.meta["model_args"] == {"model": "mobilenet_v2", "num_classes": 10, "width_mult": 0.25,
                                    "cifar_stem": True, "stem_stride": 2, "negative_padding": False,
                                    "weight_bits": None, "act_bits": None}
    assert c.config["epochs"] == 1 and c.config["seed"] == 1

    # the same command again resumes: nothing is left to train
    status, out, _ = run_cli(capsys, "train", "--model", "mobilenet_v2", *TINY, "--seed", "1", "--out", str(fp_run))
    assert status == 0 and "resuming from" in out and "epoch 1/1" not in out
    # another config in the same --out is refused with a hint
    status, _, err = run_cli(capsys, "train", "--model", "mobilenet_v2", *TINY, "--seed", "1", "--lr", "0.2",
                             "--out", str(fp_run))
    assert status == 2 and "config differs" in err and "--restart" in err
    status, _, err = run_cli(capsys, "train", "--model", "mobilenet_v1", *TINY, "--seed", "1", "--out", str(fp_run))
    assert status == 2 and "holds a run with other model_args" in err

    # quantize the float run: W4A4 fine-tuning starts from its weights
    status, out, err = run_cli(capsys, "train", "--model", "mobilenet_v2", *TINY, "--seed", "1", "--weight-bits", "4",
                               "--act-bits", "4", "--init", str(fp_run), "--lr", "0.01", "--channels-last",
                               "--out", str(q_run))
    assert status == 0, err
    assert "W4A4" in out
    q = load_checkpoint(q_run)
    assert set(q.bits.values()) == {4} and q.meta["model_args"]["weight_bits"] == 4
    assert q.config["channels_last"] is True and all(t.is_contiguous() for t in q.model_state.values())

    status, out, err = run_cli(capsys, "evaluate", str(q_run), "--json")
    assert status == 0, err
    result = json.loads(out)
    assert result["bits"] == "W4A4" and result["dataset"] == "synthetic" and result["images"] == 128
    assert result["metrics"]["model"]["top1"] == pytest.approx(q.history[-1]["val_top1"])
    assert result["metrics"]["ema"]["top1"] == pytest.approx(q.history[-1]["ema_val_top1"])
    status, out, _ = run_cli(capsys, "evaluate", str(q_run))
    assert status == 0 and "top-1" in out and "top-5" in out and "mobilenet_v2 W4A4, after epoch 1 of 1" in out
    assert "EMA" in out

    ledger_file = tmp_path / "ledger.jsonl"
    monkeypatch.setenv("PROFIT_EDU_LEDGER", str(ledger_file))
    status, _, err = run_cli(capsys, "evaluate", str(q_run), "--ledger")
    assert status == 0, err
    lines = [json.loads(line) for line in ledger_file.read_text().splitlines()]
    assert [r["copy"] for r in lines] == ["model", "ema"]
    assert lines[0]["value"] == pytest.approx(result["metrics"]["model"]["top1"], abs=0.01)
    assert lines[0]["weight_bits"] == 4 and lines[0]["seed"] == 1 and "--init" in lines[0]["command"]
    assert lines[0]["sha256"] == json.loads((q_run / "checkpoint.json").read_text())["tensors"]["sha256"]
    status, _, err = run_cli(capsys, "evaluate", str(q_run), "--ledger", "--ledger-id", "mine/q")
    assert status == 0, err
    assert [json.loads(line)["id"] for line in ledger_file.read_text().splitlines()[2:]] == ["mine/q", "mine/q/ema"]
    status, _, err = run_cli(capsys, "evaluate", str(q_run), "--ledger-id", "mine/q")
    assert status == 2 and "pass --ledger too" in err


def test_resume_checks_the_images_not_where_they_were_read_from(capsys, tmp_path, monkeypatch):
    import dataclasses

    from profit_edu import data

    run = tmp_path / "run"
    argv = ["train", "--model", "mobilenet_v2", *TINY, "--out", str(run)]
    status, _, err = run_cli(capsys, *argv)
    assert status == 0, err
    recorded = load_checkpoint(run).meta["data"]
    assert recorded["sha256"] == data.synthetic(256, seed=0).sha256()

    real = data.synthetic
    # the same images from elsewhere (as a resumed CIFAR-10 run reads the cache its first run wrote): resumes
    monkeypatch.setattr(data, "synthetic", lambda *a, **k: dataclasses.replace(real(*a, **k), source="a cache"))
    status, out, err = run_cli(capsys, *argv)
    assert status == 0 and "resuming from" in out, err

    def one_pixel_changed(*a, **k):
        d = real(*a, **k)
        images = d.images.clone()
        images[0, 0, 0, 0] ^= 1
        return dataclasses.replace(d, images=images)

    monkeypatch.setattr(data, "synthetic", one_pixel_changed)
    status, _, err = run_cli(capsys, *argv)
    assert status == 2 and "holds a run with other data" in err and "--restart" in err
    assert f"{{'data': {{'sha256': '{recorded['sha256']}'}}}}" in err  # names what differs, and only that


def test_console_entry_point_runs_in_a_fresh_process():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "profit_edu.cli", "--version"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == f"profit-edu {__version__}"


def test_plan_prints_the_paper_timeline(capsys):
    status, out, _ = run_cli(capsys, "plan", "mobilenet_v2_w4a4_imagenet")
    assert status == 0 and "total: 22 phases, 200 epochs" in out
    assert "17 of 52 (1/3)" in out and "34 of 52 (2/3)" in out
    status, out, _ = run_cli(capsys, "plan", "tiny", "--json")
    assert status == 0 and json.loads(out)["total_epochs"] == 11


def test_plan_rejects_bad_recipes_with_the_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    from profit_edu.profit import RECIPE_DIR

    bad.write_text((RECIPE_DIR / "tiny.yaml").read_text().replace("act_bits: [4]", "act_bits: [4, 8]"))
    status, _, err = run_cli(capsys, "plan", str(bad))
    assert status == 2 and "bad.yaml:" in err and "act_bits must go strictly down" in err
    status, _, err = run_cli(capsys, "plan", "no_such_recipe")
    assert status == 2 and "shipped recipes" in err


@pytest.mark.parametrize("flag", ["--compile", "--channels-last"])
def test_train_recipe_refuses_the_model_run_speed_options(capsys, tmp_path, flag):
    status, _, err = run_cli(capsys, "train", "--recipe", "tiny", flag, "--out", str(tmp_path))
    assert status == 2 and f"{flag}: not available with --recipe" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_train_recipe_runs_and_resumes(capsys, tmp_path):
    status, out, _ = run_cli(capsys, "train", "--recipe", "tiny", "--out", str(tmp_path), "--device", "cpu")
    assert status == 0 and "w4_ft2 epoch 1/1" in out and "17 frozen" in out and "AIWQ ranking" in out
    status, out, _ = run_cli(capsys, "train", "--recipe", "tiny", "--out", str(tmp_path), "--device", "cpu")
    assert status == 0 and "skipped 10 phases" in out
    status, _, err = run_cli(capsys, "train", "--recipe", "tiny", "--lr", "0.1", "--out", str(tmp_path))
    assert status == 2 and "--lr would contradict it" in err


@pytest.mark.parametrize("method", ["pact", "lsq"])
def test_evaluate_rebuilds_the_quantizer_a_recipe_run_used(method):
    from profit_edu.cli.common import model_from_args
    from profit_edu.quant import LSQQuantizer, PACTQuantizer

    args = {"model": "mobilenet_v2", "num_classes": 10, "width_mult": 0.25, "cifar_stem": True, "stem_stride": 2,
            "weight_bits": 4, "act_bits": 4, "method": method}
    kinds = {type(m) for m in model_from_args(args).modules() if isinstance(m, (LSQQuantizer, PACTQuantizer))}
    assert kinds == {LSQQuantizer if method == "lsq" else PACTQuantizer}
