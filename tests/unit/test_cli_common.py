"""profit_edu.cli.common: the one ranged-number argument type, the bit-width type, the model a run recorded, and the
guards of issue 13 (outputs that would destroy a run, hand-edited model arguments, one-line errors)."""

from __future__ import annotations

import argparse

import pytest

from profit_edu.checkpoint import save_checkpoint
from profit_edu.cli.common import (
    CLIError,
    Ranged,
    bit_width,
    builder_kwargs,
    check_finite_state,
    check_model_args,
    check_output_file,
    check_run_out,
    model_from_args,
    os_error_line,
    resume_hint,
)
from profit_edu.layers import QConv2d


@pytest.mark.parametrize(("kind", "bounds", "allowed"), [
    (int, {"low": 1}, "an integer >= 1"),
    (int, {"low": 0}, "an integer >= 0"),
    (int, {"low": 2, "high": 8}, "an integer in 2..8"),
    (float, {"low": 0, "low_open": True}, "a number > 0"),
    (float, {"low": 0, "high": 1, "high_open": True}, "a number in [0, 1)"),
    (float, {"high": 1}, "a number <= 1"),
])
def test_ranged_says_what_is_allowed(kind, bounds, allowed):
    assert Ranged(kind, **bounds).allowed == allowed


def test_ranged_accepts_the_range_and_nothing_else():
    positive = Ranged(float, low=0, low_open=True)
    assert positive("0.5") == 0.5 and isinstance(Ranged(int, low=1)("3"), int)
    for text in ("0", "-1", "nan", "inf", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"must be a number > 0, got '{text}'"):
            positive(text)
    with pytest.raises(argparse.ArgumentTypeError, match=r"must be an integer >= 1, got '1\.5'"):
        Ranged(int, low=1)("1.5")
    decay = Ranged(float, low=0, high=1, high_open=True, none_word=("none", "no EMA"))
    assert decay("None") is None and decay("0") == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match=r"in \[0, 1\), or 'none' for no EMA, got '1'"):
        decay("1")


def test_bit_width_is_checked_by_quant_check_bits():
    assert [bit_width(str(b)) for b in range(2, 9)] == list(range(2, 9))
    for text in ("1", "9", "4.0", "four", "True"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"integer bit width in 2\.\.8 \(omit the flag"):
            bit_width(text)


def test_model_from_args_builds_through_the_registry():
    args = {"model": "mobilenet_v3_small", "num_classes": 10, "width_mult": 0.25, "cifar_stem": True,
            "stem_stride": 2, "negative_padding": True, "weight_bits": 4, "act_bits": None}
    assert builder_kwargs(args) == {"num_classes": 10, "width_mult": 0.25, "cifar_stem": True, "stem_stride": 2,
                                    "negative_padding": True}
    model = model_from_args(args)
    assert {m.weight_quant.bits for m in model.modules() if isinstance(m, QConv2d)} == {4}
    with pytest.raises(CLIError, match=r"meta\.model_args\.model must be one of mobilenet_v1, .*got 'resnet50'"):
        model_from_args({**args, "model": "resnet50"})


ARGS = {"model": "mobilenet_v2", "num_classes": 10, "width_mult": 0.25, "cifar_stem": True, "stem_stride": None,
        "negative_padding": False, "weight_bits": 4, "act_bits": 4}


@pytest.mark.parametrize(("change", "match"), [
    ({"weight_bits": 9}, r"model_args\.weight_bits must be an integer bit width in 2\.\.8, or null \(float\), got 9"),
    ({"act_bits": 4.0}, r"model_args\.act_bits must be an integer bit width .*got 4\.0"),
    ({"weight_bits": True}, r"model_args\.weight_bits must be .*got True"),
    ({"width_mult": -1}, r"model_args\.width_mult must be a number in \(0, 4\], got -1"),
    ({"width_mult": float("nan")}, r"model_args\.width_mult must be .*got nan"),
    ({"width_mult": 1000}, r"model_args\.width_mult must be .*got 1000"),
    ({"num_classes": 0}, r"model_args\.num_classes must be an integer in 1\.\.100000, got 0"),
    ({"num_classes": 10**9}, r"model_args\.num_classes must be .*got 1000000000"),
    ({"cifar_stem": "yes"}, r"model_args\.cifar_stem must be true or false, got 'yes'"),
    ({"stem_stride": 3}, r"model_args\.stem_stride must be 1, 2 or null"),
    ({"method": "apot"}, r"model_args\.method must be one of duq, pact, lsq, got 'apot'"),
    ({"model": 5}, r"model_args\.model must be one of mobilenet_v1, "),
])
def test_check_model_args_names_the_field_and_what_is_allowed(change, match):
    assert check_model_args(ARGS, "run/checkpoint.json") is ARGS
    with pytest.raises(CLIError, match=r"^run/checkpoint\.json: meta\." + match + r".* \(the checkpoint was edited"):
        check_model_args({**ARGS, **change}, "run/checkpoint.json")


def test_check_model_args_missing_fields_and_not_a_mapping():
    with pytest.raises(CLIError, match=r"meta\.model_args lacks num_classes, act_bits: the checkpoint was edited"):
        check_model_args({k: v for k, v in ARGS.items() if k not in ("num_classes", "act_bits")}, "c.json")
    with pytest.raises(CLIError, match=r"meta\.model_args is missing or not an object \(got list\)"):
        check_model_args([1, 2], "c.json")


def test_check_finite_state_names_the_tensor():
    import torch

    check_finite_state({"w": torch.ones(3), "n": torch.tensor([1, 2])}, "--init r")
    with pytest.raises(CLIError, match=r"^--init r: w holds 2 NaN or inf values \(of 3\); the run diverged"):
        check_finite_state({"w": torch.tensor([1.0, float("nan"), float("inf")])}, "--init r")


def test_check_output_file(tmp_path):
    from profit_edu.models import mobilenet_v2

    save_checkpoint(tmp_path / "run", epoch=0, model=mobilenet_v2(10, width_mult=0.25))
    (tmp_path / "x.pqm").write_bytes(b"old")
    check_output_file(tmp_path / "x.pqm", "-o", inputs=(tmp_path / "run",))  # an old output: replaced, as -o does
    check_output_file(tmp_path / "run" / "model.pqm", "-o", inputs=())  # a new file beside a run: harmless
    check_output_file(tmp_path / "run" / "checkpoint.json", "-o", overwrite=True)
    cases = [
        (tmp_path / "run", (), False, r"^-o .*run is a directory; name the file to write"),
        (tmp_path / "run" / "checkpoint.json", (), False,
         r"is a file of the run in .*run: writing there would destroy that run; choose another file, or pass "
         r"--overwrite"),
        (tmp_path / "run" / "checkpoint.json", (tmp_path / "run",), True, r"is also an input of this command"),
        (tmp_path / "x.pqm", (tmp_path / "sub" / ".." / "x.pqm",), True, r"x\.pqm is also an input"),
    ]
    for path, inputs, overwrite, match in cases:
        with pytest.raises(CLIError, match=match):
            check_output_file(path, "-o", inputs=inputs, overwrite=overwrite)


def test_check_run_out(tmp_path, monkeypatch):
    import errno
    import os
    import tempfile

    check_run_out(tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []  # nothing created, the probe file removed
    (tmp_path / "file").write_text("x")
    with pytest.raises(CLIError, match=r"^--out .*file is an existing file; a run directory is a folder"):
        check_run_out(tmp_path / "file")
    with pytest.raises(CLIError, match=r"^--out .*file/run lies under .*file, which is a file"):
        check_run_out(tmp_path / "file" / "run")
    (tmp_path / "a").mkdir()
    with pytest.raises(CLIError, match=r"^--out .*a is also the run this one starts from"):
        check_run_out(tmp_path / "a", inputs=(None, str(tmp_path / "a" / ".." / "a")))
    check_run_out(tmp_path / "a", inputs=("cifar10-mobilenet_v2-w0.5-s2",))  # a shipped model's name, not a path

    def denied(*args, **kwargs):
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(CLIError, match=r"^--out .*run: cannot write in .* \(Permission denied\); choose a writable"):
        check_run_out(tmp_path / "run")


def test_resume_hint_names_the_newest_checkpoint_and_the_command(tmp_path):
    import time

    from profit_edu.models import mobilenet_v2

    argv = ["train", "--recipe", "tiny", "--out", str(tmp_path / "my run"), "--restart"]
    assert resume_hint(tmp_path / "my run", argv) == (
        f"no checkpoint was written in {tmp_path / 'my run'} yet (the first comes after epoch 1); start again with: "
        f"profit-edu train --recipe tiny --out '{tmp_path / 'my run'}' --restart")
    net = mobilenet_v2(10, width_mult=0.25)
    save_checkpoint(tmp_path / "my run" / "00_fp", epoch=4, model=net)
    time.sleep(0.01)
    save_checkpoint(tmp_path / "my run" / "01_w8a8", epoch=1, model=net)
    assert resume_hint(tmp_path / "my run", argv) == (
        f"the last checkpoint is {tmp_path / 'my run' / '01_w8a8' / 'checkpoint.json'} (after epoch 2); resume with "
        f"the same command: profit-edu train --recipe tiny --out '{tmp_path / 'my run'}'")
    assert resume_hint(tmp_path / "my run", argv, since=time.time() + 10).startswith("no checkpoint was written")


def test_os_error_line():
    import errno

    assert os_error_line(OSError(errno.ENOSPC, "No space left on device", "/r/x")) == "/r/x: No space left on device"
    assert os_error_line(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == \
        "/a -> /b: Invalid cross-device link"
    assert os_error_line(OSError("plain")) == "plain"
