"""Packed low-bit inference: file size, latency against FP32 eager PyTorch, and QAT-vs-deployable agreement.

Three measurements (each can be skipped), written to benchmarks/results/packed.json and the ledger:

size
    MobileNet-v2 (1000 classes) packed at 2, 3, 4 and 8 bits: file bytes against the bit limit of its conv and
    linear weights (sum of params x bits / 8) plus its per-channel integer parameters (int32 bias, int32 m0,
    uint8 shift: 9 bytes per output channel); the FP32 state dict for comparison. Goal: ratio <= 1.02.
latency
    MobileNet-v2 at 224x224 (1000 classes) and with the CIFAR stem at 32x32 (10 classes), batch 1 and 32: the
    integer engine (pure PyTorch) and the exported QDQ model in onnxruntime, each timed interleaved with FP32
    eager PyTorch in one process (median ratio and quartiles). Goals: engine <= 1.0x, onnxruntime <= 0.25x.
    A profile of the engine names where its time goes.
agreement
    a W4A4 MobileNet-v2 (width 0.5, CIFAR stem) trained for a few hundred steps on CIFAR-10 (the offline copy;
    synthetic data when it is missing, flagged in the JSON): top-1 of the QAT model and of the deployable model
    (computed by the integer engine, which equals it bit for bit; checked on the first batch), their agreement on
    the test images and on random images, and onnxruntime's agreement with the engine. For scale: the agreement
    of the QAT model with itself on input rounded to the engine's input grid (about half a pixel level). With
    ``--agreement-checkpoint RUN_DIR`` a W4A4 run written by ``profit-edu train`` is measured instead.

    python benchmarks/packed.py [--repeats 20] [--skip size,latency,agreement] [--agreement-steps 200]

The default run takes about 5 minutes on 2 cores. Timings are ratios because the machine is shared: absolute
times drift, ratios of interleaved runs do not (much).
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import interleaved, ratio_stats

import profit_edu as pe
from profit_edu import ledger
from profit_edu.packed import (
    DeployableModel,
    IntegerEngine,
    compare_with_engine,
    export_onnx,
    onnx_session,
    packed_size,
    quantize_image,
    run_onnx,
    to_program,
)
from profit_edu.packed.fileformat import _split, packed_bytes

RESULTS = Path(__file__).resolve().parent / "results"


def calibrated(fp: torch.nn.Module, size: int, bits: int = 4, seed: int = 0) -> torch.nn.Module:
    """A QAT copy of ``fp`` with BatchNorm statistics from one random batch and calibrated quantizers."""
    torch.manual_seed(seed)
    net = copy.deepcopy(fp).train()
    with torch.no_grad():
        net(torch.randn(4, 3, size, size))  # BN statistics of a random-init net (else logits collapse)
    pe.quantize_model(net, weight_bits=bits, act_bits=bits)
    pe.calibrate(net, torch.randn(4, 3, size, size))
    return net.eval()


# ---------------------------------------------------------------- size
def measure_size(seed: int) -> dict:
    torch.manual_seed(seed)
    fp = pe.models.mobilenet_v2(num_classes=1000).eval()
    buf = io.BytesIO()
    torch.save(fp.state_dict(), buf)
    out = {"model": "mobilenet_v2", "num_classes": 1000, "fp32_state_dict_bytes": len(buf.getvalue()), "bits": {}}
    base = calibrated(fp, 224, 4, seed)
    for bits in (2, 3, 4, 8):
        net = pe.set_bits(copy.deepcopy(base), weight_bits=bits, act_bits=bits)
        program = to_program(net)
        blob = packed_bytes(program)
        convs = program.convs()
        limit = sum(op.weight.numel() * op.weight_bits for op in convs) / 8
        packed_weights = sum(packed_size(op.weight.numel(), op.weight_bits) for op in convs)
        channels = sum(op.weight.shape[0] for op in convs)
        header = len(blob) - len(_split(blob)[1])
        row = {"file_bytes": len(blob), "weight_bit_limit_bytes": limit, "packed_weight_bytes": packed_weights,
               "per_channel_bytes": 9 * channels, "header_bytes": header, "params": sum(op.weight.numel()
                                                                                      for op in convs),
               "ratio": len(blob) / (limit + 9 * channels), "ratio_vs_weights_only": len(blob) / limit,
               "vs_fp32": len(blob) / out["fp32_state_dict_bytes"]}
        if bits == 4:
            row["onnx_bytes"] = len(export_onnx(program))
        out["bits"][str(bits)] = row
    return out


# ---------------------------------------------------------------- latency
def measure_latency(repeats: int, seed: int, threads: int) -> dict:
    configs = [("mobilenet_v2_224", dict(num_classes=1000), 224),
               ("mobilenet_v2_cifar32", dict(num_classes=10, cifar_stem=True), 32)]
    out = {}
    for name, kwargs, size in configs:
        torch.manual_seed(seed)
        fp = pe.models.mobilenet_v2(**kwargs).eval()
        program = to_program(calibrated(fp, size, 4, seed))
        engine = IntegerEngine(program)
        session = onnx_session(export_onnx(program), threads=threads)
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
            codes = quantize_image(x, program)
            fns = {"fp32": lambda fp=fp, x=x: fp(x), "engine": lambda e=engine, c=codes: e(c),
                   "onnxruntime": lambda s=session, c=codes: run_onnx(s, c)}
            n = repeats if batch == 1 else max(4, repeats // 4)
            start = time.perf_counter()
            with torch.no_grad():
                times = interleaved(fns, repeats=n, warmup=2)
            agree = compare_with_engine(program, codes, session)
            out[f"{name}/batch{batch}"] = {
                "input": f"{batch}x3x{size}x{size}", "repeats": n,
                "median_s": {k: statistics.median(v) for k, v in times.items()},
                "engine_vs_fp32": ratio_stats(times["engine"], times["fp32"]),
                "onnxruntime_vs_fp32": ratio_stats(times["onnxruntime"], times["fp32"]),
                "onnx_max_logit_steps_from_engine": agree["max_steps"], "wall_s": time.perf_counter() - start}
        if name == "mobilenet_v2_224":
            out[f"{name}/engine_profile_batch1"] = profile_engine(engine, quantize_image(
                torch.randn(1, 3, size, size), program))
    return out


def profile_engine(engine: IntegerEngine, codes: torch.Tensor) -> dict:
    """Share of the engine's CPU time per aten op (convolutions vs the elementwise requantization)."""
    from torch.profiler import ProfilerActivity, profile

    engine(codes)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            engine(codes)
    rows = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in rows) or 1.0
    top = sorted(rows, key=lambda r: -r[1])[:8]
    conv = sum(t for k, t in rows if "conv" in k)
    return {"conv_share": conv / total, "top_ops": {k: round(t / total, 4) for k, t in top}}


# ---------------------------------------------------------------- agreement
def quick_qat_model(steps: int, seed: int) -> tuple[torch.nn.Module, bool, float]:
    """A W4A4 MobileNet-v2 (width 0.5, CIFAR stem) trained from scratch for ``steps`` SGD steps of 64 images."""
    from profit_edu.data import DeviceLoader, cifar10_or_synthetic

    train, fell_back = cifar10_or_synthetic(True, n=max(steps * 64, 64), seed=seed)
    torch.manual_seed(seed)
    net = pe.models.mobilenet_v2(num_classes=10, width_mult=0.5, cifar_stem=True)
    pe.quantize_model(net, weight_bits=4, act_bits=4)
    loader = DeviceLoader(train, 64, train=True, seed=seed)
    first = next(iter(loader))[0]
    net.train()
    pe.calibrate(net, first)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=4e-5)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps, pct_start=0.15)
    start, done, epoch = time.perf_counter(), 0, 0
    while done < steps:
        loader.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
        epoch += 1
    return net.eval(), fell_back, time.perf_counter() - start


def measure_agreement(steps: int, test_images: int, seed: int, checkpoint: Path | None = None) -> dict:
    from profit_edu.data import DeviceLoader, cifar10_or_synthetic

    if checkpoint is not None:  # a run written by 'profit-edu train'
        from profit_edu.cli.packed import model_from_run

        net, arch, extra = model_from_run(checkpoint, use_ema=False)
        fell_back, train_s, what = False, 0.0, f"{arch['builder']} {arch['kwargs']} from {checkpoint}"
        program = to_program(net, arch=arch, **extra)
    else:
        net, fell_back, train_s = quick_qat_model(steps, seed)
        what = "mobilenet_v2 width 0.5, CIFAR stem, W4A4 DuQ, trained here"
        program = to_program(net)
    test, test_fell_back = cifar10_or_synthetic(False, n=test_images, seed=seed)
    fell_back = fell_back or test_fell_back
    engine = IntegerEngine(program)
    xs, ys = [], []
    for x, y in DeviceLoader(test, 256, train=False):
        xs.append(x)
        ys.append(y)
    x, y = torch.cat(xs), torch.cat(ys)
    check = x[:32]
    assert torch.equal(engine.predict(check), DeployableModel(program)(check)), "engine != deployable model"
    with torch.no_grad():
        qat = torch.cat([net(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(1)
        # reference: the QAT model on its own input rounded to the engine's input grid (half a pixel level)
        step = program.input.scale
        rounded = torch.cat([net(torch.round(x[i:i + 256] / step).clamp(-128, 127) * step)
                             for i in range(0, len(x), 256)]).argmax(1)
    dep = engine.predict(x).argmax(1)
    noise = torch.randn(256, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        noise_agree = float((net(noise).argmax(1) == engine.predict(noise).argmax(1)).double().mean()) * 100
    onnx = compare_with_engine(program, quantize_image(x[:256], program))
    return {
        "model": what, "train_steps": steps if checkpoint is None else None, "batch": 64,
        "train_s": train_s, "dataset": "synthetic (CIFAR-10 not found)" if fell_back else "cifar10-jpeg",
        "test_images": len(x), "top1_qat": float((qat == y).double().mean()) * 100,
        "top1_deployable": float((dep == y).double().mean()) * 100,
        "agreement_test": float((qat == dep).double().mean()) * 100, "agreement_random_images": noise_agree,
        "agreement_qat_with_rounded_input": float((qat == rounded).double().mean()) * 100,
        "onnx_vs_engine_top1_agreement": onnx["top1_agreement"], "onnx_max_logit_steps": onnx["max_steps"],
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="interleaved rounds at batch 1 (batch 32: a quarter)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip: size, latency, agreement")
    p.add_argument("--agreement-steps", type=int, default=150, help="training steps of the agreement model")
    p.add_argument("--agreement-checkpoint", type=Path, default=None, metavar="RUN_DIR",
                   help="measure agreement on a W4A4 run written by 'profit-edu train' instead of training one here")
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ledger", action="store_true", help="do not append to the ledger (smoke runs)")
    args = p.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    path = RESULTS / "packed.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result |= {"benchmark": "packed", "hardware": ledger.hardware(), "torch": torch.__version__,
               "threads": threads, "seed": args.seed}
    if "size" not in skip:
        result["size"] = measure_size(args.seed)
    if "latency" not in skip:
        result["latency"] = measure_latency(args.repeats, args.seed, threads)
    if "agreement" not in skip:
        result["agreement"] = measure_agreement(args.agreement_steps, args.test_images, args.seed,
                                                args.agreement_checkpoint)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_ledger:
        write_ledger(result, skip, args.seed)
    print(json.dumps(result, indent=2))
    return result


def write_ledger(result: dict, skip: set[str], seed: int) -> None:
    common = {"hardware": result["hardware"], "seed": seed, "method": "duq", "model": "mobilenet_v2"}
    if "size" not in skip:
        for bits, row in result["size"]["bits"].items():
            ledger.append(common | {"id": f"packed/size/mobilenet_v2/w{bits}", "scale": "tiny", "dataset": "none",
                                    "weight_bits": int(bits), "act_bits": int(bits), "metric": "packed_file_bytes",
                                    "value": row["file_bytes"], "ratio_to_limit": round(row["ratio"], 4)})
    if "latency" not in skip:
        for key, row in result["latency"].items():
            if "engine_vs_fp32" not in row:
                continue
            for what in ("engine_vs_fp32", "onnxruntime_vs_fp32"):
                stats = row[what]
                ledger.append(common | {"id": f"packed/latency/{key}/{what}", "scale": "tiny", "dataset": "random",
                                        "weight_bits": 4, "act_bits": 4, "metric": f"latency_ratio_{what}",
                                        "value": round(stats["median"], 4),
                                        "spread": [round(stats["q1"], 4), round(stats["q3"], 4)]})
    if "agreement" not in skip:
        a = result["agreement"]
        for metric in ("top1_qat", "top1_deployable", "agreement_test", "agreement_random_images"):
            ledger.append(common | {"id": f"packed/agreement/{metric}", "scale": "quick", "dataset": a["dataset"],
                                    "width_mult": 0.5, "weight_bits": 4, "act_bits": 4, "metric": metric,
                                    "value": round(a[metric], 2), "train_steps": a["train_steps"]})


if __name__ == "__main__":
    main()
