"""The integer engine against the deployable model, bit for bit (profit_edu.packed.engine, .deploy, .convert).

``qat_model`` (also used by the other packed tests) makes a small QAT MobileNet the way a user would:
quantize_model, calibrate on a batch in train mode (which also sets BatchNorm statistics), a few SGD steps on
synthetic data, then eval mode.
"""

import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

import profit_edu as pe
from profit_edu.data import CIFAR10_MEAN, CIFAR10_STD, synthetic
from profit_edu.packed import (
    AccumulatorOverflowError,
    DeployableModel,
    IntegerEngine,
    Program,
    UnsupportedBitsError,
    UnsupportedModelError,
    check_program,
    quantize_image,
    to_program,
    top1_agreement,
)
from profit_edu.packed.program import Conv


def normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def qat_model(builder: str = "mobilenet_v2", bits: int = 4, width: float = 0.5, steps: int = 3, seed: int = 0):
    """A small calibrated and briefly trained QAT model (eval mode), cached per arguments. Do not modify it."""
    return _qat_model(builder, bits, width, steps, seed)


@functools.cache
def _qat_model(builder: str, bits: int, width: float, steps: int, seed: int):
    gen_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        net = pe.models.get_model(builder, num_classes=10, width_mult=width, cifar_stem=True)
        pe.quantize_model(net, weight_bits=bits, act_bits=bits)
        data = synthetic(32 * (steps + 1), seed=seed)
        x, y = normalised(data.images), data.labels
        net.train()
        pe.calibrate(net, x[:32], bn="update")
        opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
        for s in range(steps):
            xb, yb = x[32 * (s + 1):32 * (s + 2)], y[32 * (s + 1):32 * (s + 2)]
            opt.zero_grad()
            F.cross_entropy(net(xb), yb).backward()
            opt.step()
        return net.eval()
    finally:
        torch.set_rng_state(gen_state)


def program_of(builder: str = "mobilenet_v2", bits: int = 4):
    """The program of ``qat_model(builder, bits)``, cached. Do not modify it."""
    return _program_of(builder, bits)


@functools.cache
def _program_of(builder: str, bits: int):
    return to_program(qat_model(builder, bits))


def random_images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))



# ---------------------------------------------------------------- bit-exactness
@pytest.mark.parametrize("builder", ["mobilenet_v2", "mobilenet_v3_small"])
def test_engine_matches_deployable_model_bit_for_bit(builder):
    program = program_of(builder)
    x = random_images(2)
    codes = quantize_image(x, program)
    fast = IntegerEngine(program).run(codes, keep_all=True)
    reference = IntegerEngine(program, arithmetic="int64").run(codes, keep_all=True)
    deployable = DeployableModel(program).codes(x)
    assert set(fast) == set(reference) == set(deployable) == set(program.tensors)
    for name in program.tensors:
        assert torch.equal(fast[name], reference[name]), name
        assert torch.equal(fast[name], deployable[name]), name
    logits = IntegerEngine(program).logits(codes)
    assert torch.equal(logits, DeployableModel(program)(x))


@pytest.mark.parametrize("bits", [2, 3, 8])
def test_engine_is_exact_at_other_bit_widths(bits):
    import copy

    net = pe.set_bits(copy.deepcopy(qat_model("mobilenet_v3_small")), weight_bits=bits, act_bits=bits)
    program = to_program(net)
    assert {op.weight_bits for op in program.convs()} == {bits}
    x = random_images(1, seed=bits)
    codes = quantize_image(x, program)
    fast = IntegerEngine(program).run(codes, keep_all=True)
    reference = IntegerEngine(program, arithmetic="int64").run(codes, keep_all=True)
    deployable = DeployableModel(program).codes(x)
    for name in program.tensors:
        assert torch.equal(fast[name], reference[name]) and torch.equal(fast[name], deployable[name]), name


def test_engine_matches_deployable_model_on_real_cifar_images():
    from profit_edu.data import cifar10

    try:
        test = cifar10(train=False)
    except FileNotFoundError:
        pytest.skip("no CIFAR-10 copy here (see profit_edu.data.cifar10); the random-image tests still ran")
    x = normalised(test.images[:4])
    for builder in ("mobilenet_v2", "mobilenet_v3_small"):
        program = program_of(builder)
        assert torch.equal(IntegerEngine(program).predict(x), DeployableModel(program)(x)), builder


def test_v3_exercises_negative_padding_and_tables():
    program = program_of("mobilenet_v3_small")
    t = program.tensors
    padded = [op for op in program.convs() if op.padding and t[op.input].offset != 0]
    assert padded, "no conv pads an h-swish input: negative padding is not tested"
    assert any(op.act == "hswish" for op in program.convs())
    assert {op.kind for op in program.ops} == {"conv", "rescale", "add", "pool", "semul"}


def test_v1_runs_and_matches():
    program = to_program(qat_model("mobilenet_v1", width=0.25, steps=1))
    codes = quantize_image(random_images(2), program)
    assert torch.equal(IntegerEngine(program)(codes), IntegerEngine(program, arithmetic="int64")(codes))


def test_engine_output_is_deterministic_and_batch_independent():
    program = program_of()
    engine = IntegerEngine(program)
    codes = quantize_image(random_images(3), program)
    together = engine(codes)
    alone = torch.cat([engine(codes[i:i + 1]) for i in range(3)])
    assert torch.equal(together, alone)


def _logit_error(net, program: Program, x: torch.Tensor) -> float:
    """The largest |QAT logit - deployable logit|, in units of the QAT logits' mean spread (max - min per image)."""
    with torch.no_grad():
        ref, got = net(x).double(), DeployableModel(program)(x)
    spread = float((ref.max(1).values - ref.min(1).values).mean())
    return float((ref - got).abs().max()) / spread


def test_deployable_model_agrees_with_the_qat_model():
    """Deployment (BatchNorm folded, streams and the image rounded) moves the logits by under 15% of their spread.

    Measured: 8-9% of the spread (max - min per image) over these 32 images. The tolerance is tight enough that a
    wrong conversion misses it: the same program with every conv's bias doubled is 38-50% off. (The v3-small QAT
    model of these tests is too briefly trained for a logit comparison: its logits spread over less than 0.01.)
    """
    net, program = qat_model("mobilenet_v2"), program_of("mobilenet_v2")
    x = normalised(synthetic(32, seed=5).images)
    assert top1_agreement(net, DeployableModel(program), x)["agreement"] >= 90.0
    assert _logit_error(net, program, x) <= 0.15
    wrong = dataclasses.replace(program, ops=[dataclasses.replace(op, bias=2 * op.bias) if isinstance(op, Conv)
                                              else op for op in program.ops])
    assert _logit_error(net, wrong, x) > 0.15


def test_program_records_arch_and_input():
    program = program_of()
    assert program.arch["builder"] == "mobilenet_v2"
    assert program.input_size == (32, 32)
    assert program.input.scale == 2.0**-5 and (program.input.lo, program.input.hi) == (-128, 127)
    shapes = check_program(program)
    assert shapes[program.output] == (10,)


# ---------------------------------------------------------------- errors
def test_accumulator_overflow_is_refused():
    program = program_of()
    classifier = program.ops[-1]
    assert isinstance(classifier, Conv)
    wide = dict(program.tensors)
    wide[classifier.input] = dataclasses.replace(wide[classifier.input], hi=2**21)
    bad = dataclasses.replace(program, tensors=wide)
    with pytest.raises(AccumulatorOverflowError, match="int32 accumulator could overflow"):
        check_program(bad)
    with pytest.raises(AccumulatorOverflowError):
        IntegerEngine(bad)
    assert issubclass(AccumulatorOverflowError, ValueError)


def test_unsupported_weight_bits_are_refused():
    net = pe.quantize_model(pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True), 5, 4)
    pe.calibrate(net.eval(), random_images(2))
    with pytest.raises(UnsupportedBitsError, match=r"weight bits 5 .*one of \(2, 3, 4, 8\)"):
        to_program(net)


def test_models_that_cannot_be_packed():
    float_net = pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True).eval()
    with pytest.raises(UnsupportedModelError, match="quantize_model"):
        to_program(float_net)
    lsq = pe.quantize_model(pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True), 4, 4,
                            method="lsq")
    with pytest.raises(UnsupportedModelError, match="DuQ"):
        to_program(lsq)
    fresh = pe.quantize_model(pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True), 4, 4)
    with pytest.raises(UnsupportedModelError, match="never initialised"):
        to_program(fresh)
    half = pe.quantize_model(pe.models.mobilenet_v2(num_classes=10, width_mult=0.25, cifar_stem=True), 4, None)
    with pytest.raises(UnsupportedModelError, match="bits=None"):
        to_program(half)
    with pytest.raises(UnsupportedModelError, match="supported"):
        to_program(torch.nn.Linear(2, 2))


def test_engine_input_checks():
    program = program_of()
    engine = IntegerEngine(program)
    with pytest.raises(TypeError, match="quantize_image"):
        engine(random_images(1))
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        engine(torch.zeros(1, 3, 16, 16, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"-128\.\.127"):
        engine(torch.full((1, 3, 32, 32), 300))
    with pytest.raises(ValueError, match="arithmetic"):
        IntegerEngine(program, arithmetic="float16")


def test_quantize_image_rounds_to_the_input_grid():
    program = program_of()
    x = torch.tensor([0.0, 1 / 64, 3 / 64, 1.0, -10.0, 10.0]).repeat(3 * 32 * 32 // 6 + 1)[:3 * 32 * 32]
    codes = quantize_image(x.view(1, 3, 32, 32), program).flatten()[:6]
    assert codes.tolist() == [0, 0, 2, 32, -128, 127]  # half to even: 0.5 -> 0, 1.5 -> 2
