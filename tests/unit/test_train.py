"""Tests of profit_edu.train: optimizer groups, schedule, KD loss, EMA, evaluation, the fit loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from profit_edu import quantize_model
from profit_edu.layers import quantizers
from profit_edu.train import (
    DivergenceError,
    History,
    ModelEMA,
    TrainConfig,
    bits_summary,
    evaluate,
    fit,
    kd_loss,
    lr_multiplier,
    make_optimizer,
    param_groups,
)


class TinyLoader:
    """A loader with the contract of ``data.DeviceLoader``: shuffle + flip are a pure function of (seed, epoch)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, *, train: bool = True, seed: int = 0):
        self.x, self.y, self.batch_size, self.train, self.seed = x, y, batch_size, train, seed
        self.epoch = 0
        self.epochs_seen: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self) -> int:
        return math.ceil(len(self.y) / self.batch_size)

    def __iter__(self):
        n = len(self.y)
        order = torch.arange(n)
        flip = torch.zeros(n, dtype=torch.bool)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=g)
            flip = torch.rand(n, generator=g) < 0.5
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            x = self.x[idx]
            x = torch.where(flip[idx, None, None, None], x.flip(-1), x)
            yield x, self.y[idx]


def tiny_cnn(num_classes: int = 4) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.Hardswish(),
        nn.Conv2d(8, 16, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, num_classes),
    )


def tiny_data(n: int = 32, num_classes: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, num_classes, (n,), generator=g)


# --------------------------------------------------------------------------------------------
# TrainConfig
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "match"), [
    ("epochs", 0, "epochs must be an int >= 1"),
    ("epochs", 2.0, "epochs"),
    ("lr", -1.0, "lr must be a finite number > 0"),
    ("lr", float("nan"), "lr"),
    ("weight_decay", -1e-5, "weight_decay"),
    ("momentum", 1.0, "momentum"),
    ("warmup_epochs", 5, r"warmup_epochs must be an int in 0..epochs \(= 1\)"),
    ("ema_decay", 1.0, "ema_decay must be None"),
    ("kd_weight", -1.0, "kd_weight"),
    ("label_smoothing", 1.0, "label_smoothing"),
    ("grad_clip", 0.0, "grad_clip"),
    ("checkpoint_every", 0, "checkpoint_every"),
    ("device", "gpu0", "device must name a torch device"),
    ("frozen", ("",), "frozen"),
    ("lr_per_step", 1, "lr_per_step must be True or False"),
])
def test_config_rejects_bad_values(field, value, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**{field: value})


def test_config_frozen_string_is_a_type_error_and_lists_become_tuples():
    with pytest.raises(TypeError, match=r"write frozen=\('conv1',\)"):
        TrainConfig(frozen="conv1")
    assert TrainConfig(frozen=["a", "b"]).frozen == ("a", "b")
    with pytest.raises(ValueError, match="momentum"):
        TrainConfig(momentum=0.0)  # Nesterov needs momentum
    assert TrainConfig(momentum=0.0, nesterov=False).momentum == 0.0


def test_config_dict_round_trip_and_unknown_keys():
    cfg = TrainConfig(epochs=3, frozen=("0",), ema_decay=None)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})


# --------------------------------------------------------------------------------------------
# Parameter groups
# --------------------------------------------------------------------------------------------
def test_param_groups_membership_lr_and_decay():
    net = quantize_model(tiny_cnn(), 4, 4)
    cfg = TrainConfig(lr=0.1, weight_decay=1e-4, frozen=("3",))
    groups = {g["name"]: g for g in param_groups(net, cfg)}
    assert list(groups) == ["quant", "frozen", "bnbias", "weight"]
    quant_names = {f"{n}.{p}" for n, _ in quantizers(net) for p in ("a_hat", "c_hat")}
    assert set(groups["quant"]["param_names"]) == quant_names
    assert groups["frozen"]["param_names"] == ["3.weight"]
    assert set(groups["bnbias"]["param_names"]) == {"1.weight", "1.bias", "4.weight", "4.bias", "6.bias", "10.bias"}
    assert set(groups["weight"]["param_names"]) == {"0.weight", "6.weight", "10.weight"}
    every = [n for g in groups.values() for n in g["param_names"]]
    assert sorted(every) == sorted(n for n, _ in net.named_parameters())  # each parameter exactly once
    assert (groups["quant"]["lr"], groups["quant"]["weight_decay"]) == pytest.approx((1e-3, 0.0))
    assert (groups["frozen"]["lr"], groups["frozen"]["weight_decay"]) == (0.0, 0.0)
    assert (groups["bnbias"]["lr"], groups["bnbias"]["weight_decay"]) == (0.1, 0.0)
    assert (groups["weight"]["lr"], groups["weight"]["weight_decay"]) == (0.1, 1e-4)
    for g in groups.values():
        assert g["base_lr"] == g["lr"]
        assert [p for p in g["params"]] == [dict(net.named_parameters())[n] for n in g["param_names"]]


def test_param_groups_float_model_has_no_quant_group():
    names = [g["name"] for g in param_groups(tiny_cnn(), TrainConfig())]
    assert names == ["bnbias", "weight"]


def test_param_groups_select_by_exact_name_not_substring():
    net = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])  # "1" is a substring of "10"
    groups = {g["name"]: g for g in param_groups(net, TrainConfig(frozen=("1",)))}
    assert groups["frozen"]["param_names"] == ["1.weight"]


def test_param_groups_reject_unknown_and_non_layer_names():
    net = quantize_model(tiny_cnn(), 4, 4)
    with pytest.raises(ValueError, match=r"frozen names \['conv9', 'features.0'\] are not modules"):
        param_groups(net, TrainConfig(frozen=("conv9", "0", "features.0")))
    with pytest.raises(ValueError, match=r"must be conv or linear layers .*1 \(BatchNorm2d\)"):
        param_groups(net, TrainConfig(frozen=("1",)))


def test_frozen_weights_stay_while_bn_a_c_and_other_weights_train():
    x, y = tiny_data()
    net = quantize_model(tiny_cnn(), 4, 4)
    net(x)  # initialise the quantizers
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(lr=0.5, weight_decay=1e-2, frozen=("3", "10"))
    opt = make_optimizer(net, cfg)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    after = net.state_dict()
    for frozen in ("3.weight", "10.weight"):
        assert torch.equal(after[frozen], before[frozen]), frozen
    # (a frozen layer's a and c keep training; the c of a conv followed by BN gets ~0 gradient, as BN undoes
    # any scale, so c is checked on the final linear layer)
    for trains in ("0.weight", "4.weight", "4.bias", "10.bias", "3.weight_quant.a_hat", "10.weight_quant.a_hat",
                   "10.weight_quant.c_hat", "5.quantizer.c_hat", "4.running_mean"):
        assert not torch.equal(after[trains], before[trains]), trains


# --------------------------------------------------------------------------------------------
# Learning-rate schedule
# --------------------------------------------------------------------------------------------
def test_lr_multiplier_matches_the_notes_tables():
    fine_tune = [0.1, 0.4, 0.7, 1.0, 0.983, 0.933, 0.854, 0.750, 0.630, 0.501, 0.371, 0.251, 0.147, 0.068, 0.018]
    bn_phase = [1.0, 0.905, 0.655, 0.346, 0.096]
    # the tables round half up (0.5005 -> 0.501), hence a tolerance of half a unit in the last place
    assert [lr_multiplier(e, 3, 15) for e in range(15)] == pytest.approx(fine_tune, abs=5e-4 + 1e-9)
    assert [lr_multiplier(e, 0, 5) for e in range(5)] == pytest.approx(bn_phase, abs=5e-4 + 1e-9)
    assert lr_multiplier(2, 3, 3) == pytest.approx(0.7)  # all warm-up


@pytest.mark.parametrize(("args", "err", "match"), [
    ((5, 0, 5), ValueError, r"epoch must be in \[0, total\) \(total = 5\)"),
    ((-1, 0, 5), ValueError, "epoch must be"),
    ((0, 6, 5), ValueError, "warmup must be in 0..total"),
    ((0, 0.5, 5), TypeError, "warmup and total ints"),
    (("0", 0, 5), TypeError, "epoch must be a number"),
])
def test_lr_multiplier_rejects_bad_arguments(args, err, match):
    with pytest.raises(err, match=match):
        lr_multiplier(*args)


def test_lr_multiplier_at_a_fraction_of_an_epoch_follows_the_same_curve():
    assert lr_multiplier(0.5, 0, 1) == pytest.approx(1e-3 + (1 - 1e-3) / 2)  # half-way down a one-epoch cosine
    assert lr_multiplier(1.5, 3, 15) == pytest.approx(0.1 + 0.9 * 1.5 / 3)  # warm-up, linear in between
    assert lr_multiplier(7.0, 3, 15) == lr_multiplier(7, 3, 15)


def _lrs_per_step(config: TrainConfig, epochs: int) -> list[list[float]]:
    """The weight group's learning rate at every step of ``fit`` (read by a forward pre-hook), epoch by epoch."""
    torch.manual_seed(0)
    model, (x, y) = tiny_cnn(), tiny_data(32)
    seen: list[float] = []
    optimizers = []
    real = make_optimizer

    def spy(m, c):
        optimizers.append(real(m, c))
        return optimizers[-1]

    model.register_forward_pre_hook(lambda m, i: seen.append(optimizers[-1].param_groups[-1]["lr"])
                                    if m.training else None)
    import profit_edu.train as train_module

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "make_optimizer", spy)
        fit(model, TinyLoader(x, y, 8), None, config)
    return [seen[e * 4:(e + 1) * 4] for e in range(epochs)]


def test_lr_per_step_decays_within_a_one_epoch_phase():
    per_epoch = _lrs_per_step(TrainConfig(epochs=1, lr=0.1, ema_decay=None), 1)
    per_step = _lrs_per_step(TrainConfig(epochs=1, lr=0.1, ema_decay=None, lr_per_step=True), 1)
    assert per_epoch == [[pytest.approx(0.1)] * 4]  # once per epoch: one epoch keeps its full rate
    assert per_step[0] == pytest.approx([0.1 * lr_multiplier(k / 4, 0, 1) for k in range(4)])
    assert per_step[0][-1] < 0.02  # ... and per step it comes down


def test_lr_per_step_with_warm_up_over_epochs():
    lrs = _lrs_per_step(TrainConfig(epochs=3, lr=0.1, warmup_epochs=1, ema_decay=None, lr_per_step=True), 3)
    want = [[0.1 * lr_multiplier(e + k / 4, 1, 3) for k in range(4)] for e in range(3)]
    assert lrs == [pytest.approx(w) for w in want]


def test_lr_per_step_needs_a_loader_with_a_length():
    model, (x, y) = tiny_cnn(), tiny_data(16)
    with pytest.raises(ValueError, match=r"lr_per_step=True\) needs a training loader with a length"):
        fit(model, iter([(x, y)]), None, TrainConfig(lr_per_step=True, ema_decay=None))


def test_a_checkpoint_older_than_a_config_field_resumes_with_its_default(tmp_path):
    from profit_edu.train import ResumeError, _check_resume_config

    saved = {k: v for k, v in TrainConfig().to_dict().items() if k != "lr_per_step"}  # written before the field
    _check_resume_config(saved, TrainConfig(), tmp_path)  # the default: the same run
    with pytest.raises(ResumeError, match="lr_per_step: checkpoint False, now True"):
        _check_resume_config(saved, TrainConfig(lr_per_step=True), tmp_path)


# --------------------------------------------------------------------------------------------
# Distillation
# --------------------------------------------------------------------------------------------
def test_kd_loss_equals_the_manual_formula_and_only_the_student_gets_gradients():
    s = torch.randn(5, 7, requires_grad=True)
    t = torch.randn(5, 7, requires_grad=True)
    p = torch.exp(t.detach()) / torch.exp(t.detach()).sum(1, keepdim=True)
    log_q = s.detach() - torch.logsumexp(s.detach(), 1, keepdim=True)
    manual = -(p * log_q).sum() / 5
    loss = kd_loss(s, t)
    torch.testing.assert_close(loss, manual)
    loss.backward()
    assert t.grad is None and s.grad is not None
    torch.testing.assert_close(s.grad, (torch.softmax(s.detach(), 1) - p) / 5)  # d/ds of soft CE
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_fit_loss_is_ce_plus_kd_with_the_teacher_in_eval_mode():
    x, y = tiny_data(8)
    torch.manual_seed(1)
    student = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(192, 4), nn.BatchNorm1d(4))
    teacher.train()
    with torch.no_grad():
        expected = F.cross_entropy(student(x), y) + 0.5 * kd_loss(student(x), teacher.eval()(x))
    teacher.train()
    stats = teacher[2].running_mean.clone()
    hist = fit(student, TinyLoader(x, y, 8, train=False), None, TrainConfig(ema_decay=None, kd_weight=0.5),
               teacher=teacher)
    assert hist[0]["train_loss"] == pytest.approx(float(expected), rel=1e-6)  # one batch: the loss before the step
    assert torch.equal(teacher[2].running_mean, stats)  # eval mode: the teacher's BN statistics did not move
    assert teacher.training  # and its mode was put back


def test_teacher_train_mode_option_updates_teacher_bn_statistics():
    x, y = tiny_data(8)
    student = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(192, 4), nn.BatchNorm1d(4)).eval()
    stats = teacher[2].running_mean.clone()
    fit(student, TinyLoader(x, y, 8), None, TrainConfig(ema_decay=None, teacher_train_mode=True), teacher=teacher)
    assert not torch.equal(teacher[2].running_mean, stats)
    assert not teacher.training
    assert all(p.grad is None for p in teacher.parameters())


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------
def test_ema_math_on_a_toy_model():
    live = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        for t in live.state_dict().values():
            if t.is_floating_point():
                t.fill_(0.0)
    ema = ModelEMA(live, decay=0.9, warmup=False)
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    with torch.no_grad():
        for t in live.state_dict().values():
            if t.is_floating_point():
                t.fill_(1.0)
    live[1].num_batches_tracked.fill_(7)
    for _ in range(3):
        ema.update(live)
    expected = 1 - 0.9**3  # ema_k = v + (e0 - v) d^k with e0 = 0, v = 1
    for key, value in ema.state_dict().items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == 7
        else:
            torch.testing.assert_close(value, torch.full_like(value, expected), msg=key)
    assert "1.running_var" in ema.state_dict()


def test_ema_covers_quantizer_parameters_and_copies_late_initialisation():
    x, _ = tiny_data(8)
    net = quantize_model(tiny_cnn(), 4, 4)
    ema = ModelEMA(net, decay=0.5, warmup=False)
    net(x)  # quantizers initialise from this batch, after the EMA was made
    ema.update(net)
    live = net.state_dict()
    for name, _ in quantizers(net):
        assert torch.equal(ema.state_dict()[f"{name}.a_hat"], live[f"{name}.a_hat"]), name  # copied, not averaged
        assert bool(ema.state_dict()[f"{name}.initialized"])
    a0 = live["2.quantizer.a_hat"].clone()
    with torch.no_grad():
        net[2].quantizer.a_hat.add_(1.0)
    ema.update(net)
    torch.testing.assert_close(ema.state_dict()["2.quantizer.a_hat"], a0 + 0.5)  # averaged from now on
    ema.module(x)  # runs without re-initialising: a stays what the EMA says
    torch.testing.assert_close(ema.state_dict()["2.quantizer.a_hat"], a0 + 0.5)


def test_ema_warms_up_and_resets():
    live = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        live.weight.fill_(0.0)
    ema = ModelEMA(live, decay=0.9997)
    with torch.no_grad():
        live.weight.fill_(1.0)
    decays = []
    for _ in range(200):
        decays.append(ema.current_decay())
        ema.update(live)
    assert decays[:3] == pytest.approx([1 / 10, 2 / 11, 3 / 12])  # d_n = (1 + n) / (10 + n) while below d
    expected = 1.0 - math.prod(decays)  # e_n = 1 - prod(d_k): the start's weight decays away
    assert ema.module.weight.item() == pytest.approx(expected) and expected > 0.95
    cold = ModelEMA(nn.Linear(1, 1, bias=False), decay=0.9997, warmup=False)
    assert cold.current_decay() == 0.9997
    with torch.no_grad():
        live.weight.fill_(5.0)
    ema.reset(live)
    assert ema.module.weight.item() == 5.0 and ema.updates == 0
    with pytest.raises(TypeError, match="warmup"):
        ModelEMA(live, warmup=1)


class _Crash(Exception):
    pass


def test_ema_warm_up_resumes_exactly(tmp_path):
    """The EMA's update count travels in the checkpoint: a run stopped after epoch 0 and resumed ends with the
    same EMA as one that never stopped (without the count, the resumed warm-up would start over)."""
    x, y = tiny_data(16)
    cfg = TrainConfig(epochs=2, ema_decay=0.999, seed=3)

    def run(out_dir, crash: bool):
        torch.manual_seed(0)
        net = quantize_model(tiny_cnn(), 4, 4)
        ema = ModelEMA(net, 0.999)

        def stop(epoch, record):
            if crash and epoch == 0:
                raise _Crash

        try:
            fit(net, TinyLoader(x, y, 8), None, cfg, out_dir=out_dir, ema=ema, callback=stop)
        except _Crash:
            torch.manual_seed(0)
            net = quantize_model(tiny_cnn(), 4, 4)
            ema = ModelEMA(net, 0.999)
            fit(net, TinyLoader(x, y, 8), None, cfg, out_dir=out_dir, ema=ema)
        return ema

    straight, resumed = run(tmp_path / "a", False), run(tmp_path / "b", True)
    assert straight.updates == resumed.updates == 4  # two epochs of two steps
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_ema_with_decay_zero_tracks_the_model_exactly():
    x, y = tiny_data(16)
    net = quantize_model(tiny_cnn(), 4, 4)
    hist = fit(net, TinyLoader(x, y, 8), TinyLoader(x, y, 8, train=False), TrainConfig(epochs=2, ema_decay=0.0))
    assert hist.column("ema_val_top1") == hist.column("val_top1")
    assert hist.column("ema_val_top5") == hist.column("val_top5")


def test_ema_rejects_bad_decay_and_a_model_with_other_keys():
    with pytest.raises(ValueError, match=r"decay must be a number in \[0, 1\)"):
        ModelEMA(nn.Linear(1, 1), decay=1.5)
    ema = ModelEMA(nn.Linear(2, 2), decay=0.9)
    with pytest.raises(ValueError, match="different state keys"):
        ema.update(nn.Linear(2, 2, bias=False))


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def test_evaluate_top1_top5_and_loss_on_fixed_logits():
    # The "model" is the identity, so each input row is its logits.
    logits = torch.tensor([
        [9.0, 8, 7, 6, 5, 4],   # label 0: top-1 hit
        [9.0, 8, 7, 6, 5, 4],   # label 4: top-5 hit
        [9.0, 8, 7, 6, 5, 4],   # label 5: miss
        [0.0, 1, 2, 3, 4, 5],   # label 5: top-1 hit
    ])
    labels = torch.tensor([0, 4, 5, 5])
    loader = [(logits[:3], labels[:3]), (logits[3:], labels[3:])]
    model = nn.Identity().train()
    out = evaluate(model, loader)
    assert out["top1"] == 50.0 and out["top5"] == 75.0
    assert out["loss"] == pytest.approx(float(F.cross_entropy(logits, labels)))
    assert model.training  # mode restored
    assert evaluate(nn.Identity(), [(logits[:, :3], torch.tensor([0, 1, 2, 0]))])["top5"] is None  # < 5 classes
    with pytest.raises(ValueError, match="empty loader"):
        evaluate(nn.Identity(), [])


def test_bits_summary():
    net = quantize_model(tiny_cnn(), 4, 3)
    assert bits_summary(net) == {"weight": 4, "act": 3}
    net[0].weight_quant.bits = None
    assert bits_summary(net) == {"weight": [None, 4], "act": 3}


# --------------------------------------------------------------------------------------------
# The fit loop
# --------------------------------------------------------------------------------------------
def test_fit_history_callback_set_epoch_and_schedule(capsys):
    x, y = tiny_data(32)
    net = quantize_model(tiny_cnn(), 4, 4)
    loader = TinyLoader(x, y, 8)
    seen = []
    rng_before = torch.get_rng_state()
    cfg = TrainConfig(epochs=3, warmup_epochs=1, lr=0.05, ema_decay=0.9, frozen=("6",))
    hist = fit(net, loader, TinyLoader(x, y, 16, train=False), cfg, callback=lambda e, r: seen.append((e, r)))
    assert isinstance(hist, History) and len(hist) == 3
    assert loader.epochs_seen == [0, 1, 2]
    assert [e for e, _ in seen] == [0, 1, 2] and seen[1][1] is hist[1]
    assert hist.column("lr") == pytest.approx([0.05 * lr_multiplier(e, 1, 3) for e in range(3)])
    keys = {"epoch", "lr", "train_loss", "train_top1", "val_top1", "val_top5", "val_loss", "ema_val_top1",
            "ema_val_top5", "bits", "frozen", "steps", "wall_s"}
    for r in hist:
        assert keys <= set(r)
        assert r["bits"] == {"weight": 4, "act": 4} and r["frozen"] == ["6"] and r["steps"] == 4
        assert 0 <= r["val_top1"] <= 100 and 0 <= r["ema_val_top1"] <= 100 and r["val_top5"] is None
    assert torch.equal(torch.get_rng_state(), rng_before)  # fit forks the global RNG
    assert capsys.readouterr() == ("", "")  # the library never prints


def test_fit_without_validation_or_ema_and_with_progress_bars(capsys):
    x, y = tiny_data(16)
    hist = fit(nn.Sequential(nn.Flatten(), nn.Linear(192, 4)), TinyLoader(x, y, 8), None,
               TrainConfig(ema_decay=None, progress=True, grad_clip=1.0, label_smoothing=0.1))
    assert hist[0]["val_top1"] is None and hist[0]["ema_val_top1"] is None
    assert "epoch 0" in capsys.readouterr().err  # tqdm draws on stderr


def test_fit_is_reproducible_for_a_seed():
    x, y = tiny_data(16)

    def run(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        net = tiny_cnn()
        fit(net, TinyLoader(x, y, 8), None, TrainConfig(epochs=2, lr=0.1, ema_decay=None, seed=seed))
        return net[-1].weight.detach().clone()

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))  # dropout draws depend on the seed


def test_compile_option_trains_through_the_compiled_module_and_saves_the_eager_one(monkeypatch, tmp_path):
    compiled = []

    class Compiled(nn.Module):  # stands in for torch.compile's OptimizedModule (real compilation takes minutes)
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self._orig_mod, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            return self._orig_mod(x)

    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(Compiled(m)) or compiled[-1])
    x, y = tiny_data(16)
    torch.manual_seed(0)
    net = tiny_cnn()
    fit(net, TinyLoader(x, y, 8), TinyLoader(x, y, 8, train=False), TrainConfig(epochs=1, lr=0.1, compile=True),
        out_dir=tmp_path)
    assert len(compiled) == 1 and compiled[0].calls == 2  # two training steps went through the compiled module
    from profit_edu.checkpoint import load_checkpoint

    assert not any("_orig_mod" in k for k in load_checkpoint(tmp_path).model_state)
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="yes")

    # a quantized model: the first step initialises the quantizers eagerly, the compiled module runs the rest
    compiled.clear()
    torch.manual_seed(0)
    qnet = quantize_model(tiny_cnn(), 4, 4)
    fit(qnet, TinyLoader(x, y, 8), None, TrainConfig(epochs=1, lr=0.1, compile=True))
    assert compiled[0].calls == 1 and all(q._ready for _, q in quantizers(qnet))


@pytest.mark.parametrize("quantized", [False, True])
def test_channels_last_trains_in_nhwc_matches_the_default_layout_and_hands_back_contiguous_weights(quantized, tmp_path):
    x, y = tiny_data(16)
    layouts = []

    def run(channels_last: bool, out=None) -> tuple[nn.Module, History]:
        torch.manual_seed(0)
        net = tiny_cnn()
        if quantized:
            quantize_model(net, 4, 4)
        teacher = tiny_cnn()
        def record(m: nn.Module, args: tuple) -> None:  # training steps only: evaluation follows the weights' layout
            if m.training:
                layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)
                               and m.weight.is_contiguous(memory_format=torch.channels_last))

        hook = net[0].register_forward_pre_hook(record)
        history = fit(net, TinyLoader(x, y, 8), TinyLoader(x, y, 8, train=False),
                      TrainConfig(epochs=2, lr=0.01, ema_decay=0.5, channels_last=channels_last), teacher=teacher,
                      out_dir=out)
        hook.remove()
        assert all(t.is_contiguous() for m in (net, teacher) for t in [*m.parameters(), *m.buffers()])
        return net, history

    ref, ref_history = run(False)
    assert not any(layouts)
    layouts.clear()
    net, history = run(True, tmp_path)
    assert len(layouts) == 4 and all(layouts)  # every training step ran in NHWC
    # The same numbers up to float rounding; with quantizers a rounding-level difference can move a value across a
    # rounding threshold, which changes a few straight-through gradients slightly.
    atol = 2e-4 if quantized else 1e-5
    for (name, a), b in zip(ref.state_dict().items(), net.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-4, atol=atol, msg=lambda m, name=name: f"{name}: {m}")
    assert history.column("val_top1") == ref_history.column("val_top1")
    from profit_edu.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path)
    assert state.config["channels_last"] is True
    with pytest.raises(ValueError, match="channels_last"):
        TrainConfig(channels_last=1)


def test_channels_last_hands_back_contiguous_weights_when_training_fails():
    x, y = tiny_data(16)
    net = tiny_cnn()
    with pytest.raises(DivergenceError):
        fit(net, TinyLoader(x * float("nan"), y, 8), None, TrainConfig(epochs=1, lr=0.1, channels_last=True))
    assert all(p.is_contiguous() for p in net.parameters())
    with pytest.raises(ValueError, match="no_such_layer"):  # refused before training starts
        fit(net, TinyLoader(x, y, 8), None, TrainConfig(epochs=1, channels_last=True, frozen=("no_such_layer",)))
    assert all(p.is_contiguous() for p in net.parameters())


class _NaNAfter(nn.Module):
    """Returns NaN logits from the ``when``-th forward pass in training mode on."""

    def __init__(self, when: int) -> None:
        super().__init__()
        self.lin = nn.Linear(192, 4)
        self.calls, self.when = 0, when

    def forward(self, x):
        out = self.lin(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.when:
                out = out * float("nan")
        return out


def test_divergence_guard_raises_and_leaves_the_last_checkpoint_untouched(tmp_path):
    x, y = tiny_data(16)
    snapshot: dict[str, bytes] = {}

    def remember(epoch, record):
        snapshot.clear()
        snapshot.update({p.name: p.read_bytes() for p in tmp_path.iterdir()})

    # epoch 0 has 2 steps (forward calls 1, 2); call 4 = epoch 1, step 1 returns NaN
    with pytest.raises(DivergenceError, match=r"loss is nan at epoch 1, step 1 .*checkpoint of epoch 0 .* untouched"):
        fit(_NaNAfter(when=3), TinyLoader(x, y, 8), None, TrainConfig(epochs=3, ema_decay=0.9), out_dir=tmp_path,
            callback=remember)
    assert snapshot and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == snapshot
    with pytest.raises(DivergenceError, match="No checkpoint was written yet"):
        fit(_NaNAfter(when=0), TinyLoader(x, y, 8), None, TrainConfig(ema_decay=None))
