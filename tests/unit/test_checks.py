"""profit_edu.book.checks: every check passes a right answer and fails wrong ones with a helpful message."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from profit_edu.book import checks
from profit_edu.quant import HSWISH_OFFSET

# --------------------------------------------------------------------------------------------
# Right answers (written independently of the checks' references)
# --------------------------------------------------------------------------------------------


def ledger_lookup(lines, query):
    rows = [json.loads(line) for line in lines]
    (hit,) = [r for r in rows if all(r.get(k) == v for k, v in query.items())]
    return hit["value"], hit["command"]


def quick_rule(value, has_gpu):
    return {"1": True, "0": False}.get(value or "", not has_gpu)


def storage_bytes(n, bits):
    return (n * bits + 7) // 8


def dw_pw(c_in, c_out, h, w, k):
    return c_in * h * w * k * k, c_in * c_out * h * w


def levels_used(weight, bits):
    k = 2 ** (bits - 1) - 1
    codes = torch.round(torch.clamp(weight / weight.abs().max() * k, -k, k))
    return torch.tensor([len(set(codes[i].flatten().tolist())) for i in range(weight.shape[0])])


def uniform(x, bits, clip):
    k = 2**bits - 1
    return torch.round(torch.clamp(x / clip, 0, 1) * k) / k * clip


def round_ste(x):
    return x + (torch.round(x) - x).detach()


def pact_alpha_grad(x, alpha, bits):
    return (x >= alpha).float()


def duq_grad_a(x, a, c, bits):
    return torch.where((x > 0) & (x < a), -c * x / a**2, torch.zeros_like(x))


def lsq_init(x, bits):
    return 2 * x.abs().mean().item() / math.sqrt(2 ** (bits - 1) - 1)


def hswish(x):
    return x * F.relu6(x + 3) / 6


def int_route(codes, weight, step):
    p, ch = weight.shape[-1] // 2, weight.shape[0]
    acc = F.conv2d(codes.double(), weight, padding=p, groups=ch)
    return step * acc - HSWISH_OFFSET * weight.sum(dim=(1, 2, 3)).view(1, ch, 1, 1)


def border_fraction(h, w, k):
    p = k // 2
    return 1 - max(h - 2 * p, 0) * max(w - 2 * p, 0) / (h * w)


def gaussian_kl(mn, vn, mo, vo):
    return 0.5 * torch.log(vo / vn) + (vn + (mn - mo) ** 2) / (2 * vo) - 0.5


def flip_fraction(w0, w1, a, bits):
    k = 2 ** (bits - 1) - 1
    c0 = torch.round(torch.clamp(w0 / a, -1, 1) * k)
    c1 = torch.round(torch.clamp(w1 / a, -1, 1) * k)
    return (c0 != c1).double().mean().item()


def layer_aiwq(y_new, y_old, ddof=1, pooled=False, drop=True):
    if pooled:
        y_new, y_old = y_new.reshape(-1, 1, 1, 1), y_old.reshape(-1, 1, 1, 1)
    a, b = y_new.double().numpy(), y_old.double().numpy()
    mn, mo = a.mean(axis=(0, 2, 3)), b.mean(axis=(0, 2, 3))
    vn, vo = a.var(axis=(0, 2, 3), ddof=ddof), b.var(axis=(0, 2, 3), ddof=ddof)
    keep = (vn > 0) & (vo > 0) if drop else np.ones_like(vn, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):  # drop=False: the wrong answer divides by 0
        kl = 0.5 * np.log(vo[keep] / vn[keep]) + (vn[keep] + (mn[keep] - mo[keep]) ** 2) / (2 * vo[keep]) - 0.5
    return float(kl.mean())


def pack_codes(codes, bits, msb_first=False):
    out, acc, nbits = [], 0, 0
    for c in codes.tolist():
        if msb_first:
            c = int(f"{c:0{bits}b}"[::-1], 2)
        acc |= c << nbits
        nbits += bits
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8
    if nbits:
        out.append(acc & 0xFF)
    return torch.tensor(out, dtype=torch.uint8)


def requantize(n, m0, shift):
    from fractions import Fraction

    return torch.tensor([round(Fraction(int(v) * m0, 2**shift)) for v in n])  # Python rounds half to even


def fold_bn(weight, bias, gamma, beta, mean, var, eps):
    g = gamma / torch.sqrt(var + eps)
    return weight * g.view(-1, 1, 1, 1), g * (bias - mean) + beta


def gather_shards(parts):
    world = len(parts)
    out = torch.empty(world * len(parts[0]), *parts[0].shape[1:])
    for r, part in enumerate(parts):
        out[r::world] = part
    return out


def global_batch(batch, world, base_lr, base_batch):
    if batch % world:
        raise ValueError(f"{batch} does not split over {world}")
    return batch // world, base_lr * batch / base_batch


def gpu_hours(epochs, images, student, teacher, tflops, student_passes=3):
    return 2 * epochs * images * (student_passes * student + teacher) * 1e9 / (tflops * 1e12) / 3600


def profit_frozen(raw, fraction, ema, skip_above, *, skip=True, use_mean=False):
    score = {}
    for name, values in raw.items():
        kept = [v for v in values if v == v and (v <= skip_above or not skip)]
        m = 0.0
        for v in kept:
            m = ema * m + (1 - ema) * v
        score[name] = sum(kept) if use_mean else m
    order = sorted(score, key=score.get, reverse=True)  # a stable sort: ties keep model order
    return order[: math.floor(len(order) * fraction)]


def paired_interval(a, b, *, quantile=None, ddof=1, paired=True):
    from scipy import stats

    d = np.asarray(a) - np.asarray(b)
    n = len(d)
    if n == 1:
        return float(d[0]), None
    q = quantile or stats.t.ppf(0.975, n - 1)
    spread = d.std(ddof=ddof) if paired else math.sqrt(np.var(a, ddof=1) / n + np.var(b, ddof=1) / n) * math.sqrt(n)
    return float(d.mean()), float(q * spread / math.sqrt(n))


def phase_list(s, *, bn2=True):
    out = [("fp", s.fp_epochs)] if s.fp_epochs else []

    def stage(prefix, profit):
        if s.bn_stabilize:
            out.append((f"{prefix}_bn", s.bn_epochs))
        if profit:
            out.append((f"{prefix}_sampling", s.sampling_epochs))
            out.extend((f"{prefix}_ft{k}", s.ft_epochs) for k in range(1, len(s.freeze_fractions) + 1))
        else:
            out.append((f"{prefix}_ft", s.ft_epochs))
        if s.bn_stabilize and bn2:
            out.append((f"{prefix}_bn2", s.bn_epochs))

    for a in s.act_bits:
        stage(f"a{a}", False)
    for w in s.weight_bits:
        stage(f"w{w}", w in s.profit_bits)
    return out


def kd_grad(s, t):
    return (torch.softmax(s, dim=1) - torch.softmax(t, dim=1)) / s.shape[0]


def ema_start_weight(n, decay, warmup):
    share = 1.0
    for k in range(n):
        share *= min(decay, (1 + k) / (10 + k)) if warmup else decay
    return share


RIGHT = [
    (checks.check_ledger_lookup, ledger_lookup),
    (checks.check_quick_mode_rule, quick_rule),
    (checks.check_storage_bytes, storage_bytes),
    (checks.check_depthwise_macs, dw_pw),
    (checks.check_levels_per_channel, levels_used),
    (checks.check_uniform_quantizer, uniform),
    (checks.check_round_ste, round_ste),
    (checks.check_signed_levels, lambda b: 2**b - 1),
    (checks.check_pact_alpha_grad, pact_alpha_grad),
    (checks.check_duq_grad_a, duq_grad_a),
    (checks.check_lsq_step_init, lsq_init),
    (checks.check_hswish, hswish),
    (checks.check_negative_padding_conv, int_route),
    (checks.check_border_fraction, border_fraction),
    (checks.check_gaussian_kl, gaussian_kl),
    (checks.check_flip_fraction, flip_fraction),
    (checks.check_layer_aiwq, layer_aiwq),
    (checks.check_pack_codes, pack_codes),
    (checks.check_requantize, requantize),
    (checks.check_fold_bn, fold_bn),
    (checks.check_gather_shards, gather_shards),
    (checks.check_global_batch, global_batch),
    (checks.check_gpu_hours, gpu_hours),


    (checks.check_profit_frozen, profit_frozen),
    (checks.check_paired_interval, paired_interval),
    (checks.check_phase_list, phase_list),
    (checks.check_kd_grad, kd_grad),
    (checks.check_ema_start_weight, ema_start_weight),
]


@pytest.mark.parametrize(("check", "answer"), RIGHT, ids=[c.__name__ for c, _ in RIGHT])
def test_right_answer_passes(check, answer) -> None:
    assert check(answer) is True


# --------------------------------------------------------------------------------------------
# Wrong answers, each with the words its message must contain
# --------------------------------------------------------------------------------------------
WRONG = [
    (checks.check_ledger_lookup, lambda lines, q: (json.loads(lines[0])["value"], "x"), "returned"),
    (checks.check_ledger_lookup, lambda lines, q: 1.0, "should return (value, command)"),
    (checks.check_quick_mode_rule, lambda v, g: v == "1", "expected"),
    (checks.check_quick_mode_rule, lambda v, g: "yes", "True or False"),
    (checks.check_storage_bytes, lambda n, b: n * b / 8, "round up"),
    (checks.check_storage_bytes, lambda n, b: n * b, "expected"),
    (checks.check_depthwise_macs, lambda ci, co, h, w, k: (ci * co * h * w * k * k, ci * co * h * w),
     "c_out plays no part"),
    (checks.check_depthwise_macs, lambda ci, co, h, w, k: 0, "pair"),
    (checks.check_levels_per_channel, lambda w, b: torch.full((w.shape[0],), 2**b - 1), "one clip for the whole"),
    (checks.check_levels_per_channel, lambda w, b: torch.ones(3), "one count per output channel"),
    (checks.check_uniform_quantizer, lambda x, b, c: x, "leaves [0, 1.0]"),
    (checks.check_uniform_quantizer, lambda x, b, c: torch.clamp(x, 0, c), "distinct values"),
    (checks.check_uniform_quantizer, lambda x, b, c: torch.round(x * (2**b - 1) / c) / (2**b - 1) * c, "clip"),
    (checks.check_uniform_quantizer, lambda x, b, c: torch.round(torch.clamp(x / c, 0, 1) * 2**b) / 2**b * c,
     "at most 4"),
    (checks.check_uniform_quantizer,
     lambda x, b, c: torch.floor(torch.clamp(x / c, 0, 1) * (2**b - 1)) / (2**b - 1) * c, "differ"),
    (checks.check_round_ste, torch.round, "gradient"),
    (checks.check_round_ste, lambda x: torch.round(x.detach()), "cut off from the graph"),
    (checks.check_round_ste, lambda x: x, "forward pass"),
    (checks.check_signed_levels, lambda b: 2**b, "unused"),
    (checks.check_signed_levels, lambda b: "15", "should be a number"),
    (checks.check_pact_alpha_grad, lambda x, a, b: torch.zeros_like(x), "dy/dalpha"),
    (checks.check_duq_grad_a, lambda x, a, c, b: -c * x / a**2, "dy/da"),
    (checks.check_lsq_step_init, lambda x, b: 2 * x.abs().mean().item() / math.sqrt(2**b - 1), "Qp"),
    (checks.check_hswish, F.relu, "h-swish"),
    (checks.check_hswish, lambda x: F.hardswish(x) + 0.0 * x if x.numel() > 1 else x * 0, "minimum"),
    (checks.check_negative_padding_conv,
     lambda k, w, s: F.conv2d(s * k.double() - HSWISH_OFFSET, w, padding=w.shape[-1] // 2, groups=w.shape[0]),
     "zero* padding"),
    (checks.check_negative_padding_conv, lambda k, w, s: torch.zeros(1), "shape"),
    (checks.check_border_fraction, lambda h, w, k: 0.0, "within"),
    (checks.check_border_fraction, lambda h, w, k: 4 * (k // 2) / h, "expected"),
    (checks.check_gaussian_kl, lambda mn, vn, mo, vo: gaussian_kl(mo, vo, mn, vn), "KL(old || new)"),
    (checks.check_gaussian_kl, lambda mn, vn, mo, vo: gaussian_kl(mn, vn.sqrt(), mo, vo.sqrt()), "differ"),
    (checks.check_gaussian_kl, lambda mn, vn, mo, vo: torch.zeros(3), "shape"),
    (checks.check_flip_fraction, lambda w0, w1, a, b: float((w0 != w1).double().mean()), "compare the integer codes"),
    (checks.check_flip_fraction, lambda w0, w1, a, b: flip_fraction(w0, w1, a, b + 1), "K = 2**(bits-1) - 1"),
    (checks.check_flip_fraction, lambda w0, w1, a, b: "many", "should be a number"),
    (checks.check_layer_aiwq, lambda yn, yo: layer_aiwq(yn, yo, pooled=True), "one Gaussian per output channel"),
    (checks.check_layer_aiwq, lambda yn, yo: layer_aiwq(yn, yo, ddof=0), "unbiased"),
    (checks.check_layer_aiwq, lambda yn, yo: layer_aiwq(yn, yo, drop=False), "variance is 0"),
    (checks.check_pack_codes, lambda c, b: c.to(torch.uint8), "bytes, expected"),
    (checks.check_pack_codes, lambda c, b: pack_codes(c, b, msb_first=True), "lowest bits"),
    (checks.check_pack_codes, lambda c, b: pack_codes(c, b).long(), "uint8"),
    (checks.check_requantize, lambda n, m0, s: torch.floor(n * m0 / 2**s + 0.5).long(), "half to even"),
    (checks.check_requantize, lambda n, m0, s: torch.zeros(2), "shape"),
    (checks.check_fold_bn, lambda w, b, g, be, m, v, e: fold_bn(w, b + m, g, be, m, v, e), "forgets the running mean"),
    (checks.check_fold_bn, lambda w, b, g, be, m, v, e: fold_bn(w, b, g, be, m, v.sqrt(), e), "differ"),
    (checks.check_fold_bn, lambda w, b, g, be, m, v, e: w, "pair"),
    (checks.check_fold_bn, lambda w, b, g, be, m, v, e: (w[0], b), "one scale and one bias"),
    (checks.check_gather_shards, lambda parts: torch.cat(parts), "another order"),
    (checks.check_gather_shards, lambda parts: parts[0], "shape"),
    (checks.check_global_batch, lambda b, w, lr, base: (b // w, lr), "base_lr x global_batch / base_batch"),
    (checks.check_global_batch, lambda b, w, lr, base: (b, lr * b / base), "images per process"),
    (checks.check_global_batch, lambda b, w, lr, base: (b // w, lr * b / base), "should raise ValueError"),
    (checks.check_gpu_hours, lambda *a: gpu_hours(*a, student_passes=1), "three times"),
    (checks.check_gpu_hours, lambda *a: 1.0, "expected"),


    (checks.check_profit_frozen, lambda r, f, e, s: profit_frozen(r, f, e, s, skip=False), "skip the values above"),
    (checks.check_profit_frozen, lambda r, f, e, s: profit_frozen(r, f, e, s, use_mean=True), "EMA"),
    (checks.check_profit_frozen, lambda r, f, e, s: profit_frozen(r, f, e, s)[:1], "floor(L * f)"),
    (checks.check_profit_frozen, lambda r, f, e, s: 3, "list of layer names"),
    (checks.check_paired_interval, lambda a, b: paired_interval(a, b, quantile=1.96), "not the normal 1.96"),
    (checks.check_paired_interval, lambda a, b: paired_interval(a, b, paired=False), "pair the seeds"),
    (checks.check_paired_interval, lambda a, b: paired_interval(a, b, ddof=0), "n - 1"),
    (checks.check_paired_interval, lambda a, b: (paired_interval(a, b)[0], paired_interval(a, b)[1] or 0.0),
     "no interval"),
    (checks.check_paired_interval, lambda a, b: (0.0, 1.0), "mean difference"),
    (checks.check_phase_list, lambda s: phase_list(s, bn2=False), "first difference"),
    (checks.check_phase_list, lambda s: "fp", "(name, epochs) pairs"),
    (checks.check_kd_grad, lambda s, t: kd_grad(s, t) * s.shape[0], "divide the gradient by N"),
    (checks.check_kd_grad, lambda s, t: -kd_grad(s, t), "sign is flipped"),
    (checks.check_kd_grad, lambda s, t: torch.softmax(s, dim=1) - t, "differ"),
    (checks.check_ema_start_weight, lambda n, d, w: d**n, "min(decay, (1 + k) / (10 + k))"),
    (checks.check_ema_start_weight, lambda n, d, w: 1 - ema_start_weight(n, d, w), "share of the updates"),
]


@pytest.mark.parametrize(("check", "answer", "words"), WRONG,
                         ids=[f"{c.__name__}-{i}" for i, (c, _, _) in enumerate(WRONG)])
def test_wrong_answer_fails_with_a_hint(check, answer, words: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(words)):
        check(answer)


def test_crashing_answer_is_reported_with_its_inputs() -> None:
    def broken(x, bits, clip):
        raise KeyError("oops")

    with pytest.raises(AssertionError, match=r"fn\(x, 2, 1.0\) raised KeyError"):
        checks.check_uniform_quantizer(broken)
    with pytest.raises(AssertionError, match="expected a function"):
        checks.check_uniform_quantizer(42)


def test_report_prints_instead_of_raising(capsys: pytest.CaptureFixture[str]) -> None:
    assert checks.report(checks.check_signed_levels, lambda b: 2**b - 1) is None
    assert capsys.readouterr().out.startswith("Correct: check_signed_levels passed.")
    checks.report(checks.check_signed_levels, lambda b: 2**b)
    assert capsys.readouterr().out.startswith("Not yet (check_signed_levels): fn(2) = 4, expected 3")

    def todo(bits):
        raise NotImplementedError

    checks.report(checks.check_signed_levels, todo)
    assert "NotImplementedError" in capsys.readouterr().out


def test_report_wraps_hints_to_the_book_column(capsys: pytest.CaptureFixture[str]) -> None:
    checks.report(checks.check_levels_per_channel, lambda w, bits: torch.full((w.shape[0],), 2**bits - 1))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) > 1 and max(len(line) for line in lines) <= checks.REPORT_WIDTH
    assert all(line.startswith("    ") for line in lines[1:])


def test_every_public_check_is_tested() -> None:
    tested = {c.__name__ for c, _ in RIGHT}
    public = {n for n in checks.__all__ if n.startswith("check_")}
    assert public == tested
