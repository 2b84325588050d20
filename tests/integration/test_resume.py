"""Exact resumption: a run stopped after any epoch, or killed with SIGKILL mid-epoch, and resumed, ends with weights
bit-identical to an uninterrupted run (CPU). The model is a tiny CNN quantized at W4A4, trained with dropout,
a train-mode augmentation, SGD momentum and a weight EMA, so every piece of saved state matters.

This file is also a script: ``python tests/integration/test_resume.py OUT_DIR [--kill-at EPOCH STEP]`` trains the
same run in a fresh process (the SIGKILL test uses it).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from profit_edu import quantize_model
from profit_edu.checkpoint import load_checkpoint
from profit_edu.train import TrainConfig, fit

EPOCHS = 4
CONFIG = TrainConfig(epochs=EPOCHS, warmup_epochs=1, lr=0.05, weight_decay=1e-3, ema_decay=0.8, seed=3)


class TinyLoader:
    """The contract of ``data.DeviceLoader``: shuffling and flips are a pure function of (seed, epoch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, train: bool, seed: int = 0,
                 kill_at: tuple[int, int] | None = None) -> None:
        self.x, self.y, self.batch_size, self.train, self.seed = x, y, batch_size, train, seed
        self.epoch = 0
        self.kill_at = kill_at

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        n = len(self.y)
        order, flip = torch.arange(n), torch.zeros(n, dtype=torch.bool)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            flip = torch.rand(n, generator=g) < 0.5
        for step, i in enumerate(range(0, n, self.batch_size)):
            if self.kill_at == (self.epoch, step):
                os.kill(os.getpid(), signal.SIGKILL)  # die mid-epoch, with no chance to clean up
            idx = order[i:i + self.batch_size]
            x = torch.where(flip[idx, None, None, None], self.x[idx].flip(-1), self.x[idx])
            yield x, self.y[idx]


def build_model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(16, 4),
    )
    return quantize_model(net, weight_bits=4, act_bits=4)


def loaders(kill_at: tuple[int, int] | None = None) -> tuple[TinyLoader, TinyLoader]:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(48, 3, 8, 8, generator=g), torch.randint(0, 4, (48,), generator=g)
    return TinyLoader(x, y, 8, train=True, seed=7, kill_at=kill_at), TinyLoader(x, y, 16, train=False)


def strip_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in history]


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


class Stop(Exception):
    pass



@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: final model, final EMA and history."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("reference")
    model = build_model()
    train, val = loaders()
    history = fit(model, train, val, CONFIG, out_dir=out)
    torch.set_num_threads(before)
    return out, model.state_dict(), load_checkpoint(out).ema_state, history


@pytest.mark.parametrize("stop_after", range(EPOCHS - 1))
def test_resume_after_any_epoch_is_bit_identical(tmp_path, reference, stop_after):
    _, ref_state, ref_ema, ref_history = reference

    def stop(epoch, record):
        if epoch == stop_after:
            raise Stop

    train, val = loaders()
    with pytest.raises(Stop):
        fit(build_model(), train, val, CONFIG, out_dir=tmp_path, callback=stop)
    assert load_checkpoint(tmp_path).epoch == stop_after

    model = build_model()  # a fresh process would build a fresh model: quantizers not yet initialised
    train, val = loaders()
    history = fit(model, train, val, CONFIG, out_dir=tmp_path)
    assert_same_state(model.state_dict(), ref_state)
    assert_same_state(load_checkpoint(tmp_path).ema_state, ref_ema)
    assert strip_times(history) == strip_times(ref_history)


def test_resume_of_a_finished_run_trains_nothing(reference):
    out, ref_state, _, ref_history = reference
    model = build_model()
    calls = []
    history = fit(model, *loaders(), CONFIG, out_dir=out, callback=lambda e, r: calls.append(e))
    assert calls == [] and strip_times(history) == strip_times(ref_history)
    assert_same_state(model.state_dict(), ref_state)


def test_resume_with_another_config_is_refused(reference):
    out = reference[0]
    with pytest.raises(ValueError, match=r"config differs \(lr: checkpoint 0.05, now 0.1\)"):
        fit(build_model(), *loaders(), TrainConfig(**{**CONFIG.to_dict(), "lr": 0.1}), out_dir=out)
    # fields that cannot change the result may differ
    fit(build_model(), *loaders(), TrainConfig(**{**CONFIG.to_dict(), "checkpoint_every": 2}), out_dir=out)


def test_resume_false_starts_over(tmp_path, reference):
    _, ref_state, _, _ = reference
    fit(build_model(), *loaders(), TrainConfig(**{**CONFIG.to_dict(), "epochs": 1}), out_dir=tmp_path)
    model = build_model()
    fit(model, *loaders(), CONFIG, out_dir=tmp_path, resume=False)
    assert_same_state(model.state_dict(), ref_state)


def test_resume_with_a_train_mode_teacher_is_bit_identical(tmp_path):
    """KD from a teacher in train mode (the official script's choice): its drifting BN statistics are saved too."""
    config = TrainConfig(**{**CONFIG.to_dict(), "epochs": 3, "teacher_train_mode": True, "kd_weight": 0.5})

    def teacher() -> nn.Module:
        torch.manual_seed(5)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    ref_model, ref_teacher = build_model(), teacher()
    fit(ref_model, *loaders(), config, teacher=ref_teacher)

    def stop(epoch, record):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(build_model(), *loaders(), config, teacher=teacher(), out_dir=tmp_path, callback=stop)
    model, fresh_teacher = build_model(), teacher()
    fit(model, *loaders(), config, teacher=fresh_teacher, out_dir=tmp_path)
    assert_same_state(model.state_dict(), ref_model.state_dict())
    assert_same_state(fresh_teacher.state_dict(), ref_teacher.state_dict())


def _run_script(out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, __file__, str(out), *extra], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    ref = _run_script(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    killed = _run_script(tmp_path / "run", "--kill-at", "2", "3")  # SIGKILL in epoch 2, before its step 3
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(tmp_path / "run").epoch == 1  # the last completed epoch survived the kill
    resumed = _run_script(tmp_path / "run")
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_checkpoint(tmp_path / "ref"), load_checkpoint(tmp_path / "run")
    assert a.epoch == b.epoch == EPOCHS - 1
    assert_same_state(a.model_state, b.model_state)
    assert_same_state(a.ema_state, b.ema_state)
    assert_same_state(a.momentum, b.momentum)
    assert strip_times(a.history) == strip_times(b.history)


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    out = Path(argv[0])
    kill_at = (int(argv[2]), int(argv[3])) if len(argv) > 1 and argv[1] == "--kill-at" else None
    fit(build_model(), *loaders(kill_at), CONFIG, out_dir=out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
