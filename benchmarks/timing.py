"""Timing helpers for benchmarks: interleaved repetitions in one process, reported as ratios.

The machine is shared and noisy, so absolute times drift; the ratio of two steps timed back to back
(alternating which goes first) is stable. Results are the median ratio with its interquartile range.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved (ABAB..., order alternating each round), in seconds."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def ratio_stats(num: list[float], den: list[float]) -> dict[str, float]:
    """Median and quartiles of the per-round ratios num[i] / den[i]."""
    ratios = sorted(a / b for a, b in zip(num, den))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [ratios[0], statistics.median(ratios), ratios[-1]]
    return {"median": statistics.median(ratios), "q1": q[0], "q3": q[2], "min": ratios[0], "max": ratios[-1],
            "n": len(ratios)}


def sgd_step(model, x, y, *, lr: float = 1e-3, weight_decay: float = 0.0) -> Callable[[], None]:
    """A closure doing one training step (forward, cross-entropy, backward, SGD Nesterov update) on fixed data."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if x.is_cuda:
            torch.cuda.synchronize()

    return step
