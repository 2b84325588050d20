"""``profit-edu pack`` then ``profit-edu run-packed``, through argparse (profit_edu.cli.packed)."""

import argparse
import json

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

import profit_edu as pe
from profit_edu.checkpoint import save_checkpoint
from profit_edu.cli.packed import add_pack_commands, load_image
from profit_edu.data import CIFAR10_CLASSES
from profit_edu.packed import IntegerEngine, export_onnx, load_packed, quantize_image

MODEL_ARGS = {"model": "mobilenet_v2", "num_classes": 10, "width_mult": 0.25, "cifar_stem": True,
              "stem_stride": None, "negative_padding": False, "weight_bits": 4, "act_bits": 4}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="profit-edu")
    add_pack_commands(p.add_subparsers(dest="command"))
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


def trained_run(tmp_path):
    """A run directory like the one 'profit-edu train' writes, with a calibrated W4A4 model."""
    torch.manual_seed(0)
    net = pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True)
    pe.quantize_model(net, 4, 4)
    pe.calibrate(net, torch.randn(16, 3, 32, 32), bn="update")
    net.eval()
    run_dir = tmp_path / "run"
    save_checkpoint(run_dir, epoch=0, model=net, meta={"model_args": MODEL_ARGS,
                                                        "data": {"dataset": "cifar10", "seed": 0}})
    return run_dir, net


def write_images(tmp_path, n: int = 2) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_pack_then_run_packed(tmp_path, capsys):
    run_dir, _ = trained_run(tmp_path)
    out = tmp_path / "model.pqm"
    assert run(["pack", str(run_dir), "-o", str(out)]) == 0
    assert "packed mobilenet_v2" in capsys.readouterr().out
    program = load_packed(out)
    assert program.arch == {"builder": "mobilenet_v2", "kwargs": {"num_classes": 10, "width_mult": 0.25,
                                                                  "cifar_stem": True, "stem_stride": None}}
    assert program.classes[3] == "cat"

    images = write_images(tmp_path)
    assert run(["run-packed", str(out), *images, "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["image"] == images[0] and len(first["top"]) == 5
    probs = [t["probability"] for t in first["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    x = load_image(images[0], program.input_size, program.mean, program.std)[None]
    want = IntegerEngine(program)(quantize_image(x, program)).argmax(1).item()
    assert first["top"][0]["index"] == want

    assert run(["run-packed", str(out), images[0], "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{images[0]}: ") and text.count(",") == 2


def test_pack_from_state_dict_with_config(tmp_path, capsys):
    run_dir, net = trained_run(tmp_path)
    from_run = tmp_path / "run.pqm"
    assert run(["pack", str(run_dir), "-o", str(from_run)]) == 0
    weights, config = tmp_path / "w.safetensors", tmp_path / "model.json"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    kwargs = {k: MODEL_ARGS[k] for k in ("num_classes", "width_mult", "cifar_stem", "stem_stride")}
    config.write_text(json.dumps({"builder": "mobilenet_v2", "weight_bits": 4, "act_bits": 4, "kwargs": kwargs,
                                  "classes": list(CIFAR10_CLASSES)}))
    out, onnx_out = tmp_path / "m.pqm", tmp_path / "m.onnx"
    argv = ["pack", str(weights), "--config", str(config), "-o", str(out)]
    if _has_onnx():
        argv += ["--onnx", str(onnx_out)]
    assert run(argv) == 0
    capsys.readouterr()
    # the same weights and architecture give the same program as the run directory: equal files, equal logits
    program, expected = load_packed(out), load_packed(from_run)
    assert program.arch == expected.arch and program.classes == expected.classes
    assert out.read_bytes() == from_run.read_bytes()
    x = quantize_image(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), program)
    assert torch.equal(IntegerEngine(program)(x), IntegerEngine(expected)(x))
    if _has_onnx():
        assert onnx_out.read_bytes() == export_onnx(expected)


def _has_onnx() -> bool:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def test_bad_inputs_exit_with_a_message(tmp_path, capsys):
    run_dir, _ = trained_run(tmp_path)
    out = tmp_path / "model.pqm"
    assert run(["pack", str(run_dir), "-o", str(out)]) == 0
    capsys.readouterr()
    damaged = tmp_path / "damaged.pqm"
    blob = bytearray(out.read_bytes())
    blob[-5] ^= 0xFF
    damaged.write_bytes(bytes(blob))
    images = write_images(tmp_path, 1)
    assert run(["run-packed", str(damaged), *images]) == 2
    assert "SHA-256 mismatch" in capsys.readouterr().err
    assert run(["run-packed", str(out), str(tmp_path / "nope.png")]) == 2
    assert "cannot read the image" in capsys.readouterr().err
    assert run(["pack", str(tmp_path / "w.safetensors"), "-o", str(out)]) == 2
    assert "--config" in capsys.readouterr().err
    assert run(["pack", str(run_dir), "-o", str(out), "--ema"]) == 2
    assert "no EMA weights" in capsys.readouterr().err
    assert run(["pack", str(tmp_path / "no-run"), "-o", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
