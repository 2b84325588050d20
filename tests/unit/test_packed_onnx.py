"""ONNX export (profit_edu.packed.onnx_export): onnxruntime agrees with the integer engine within one logit step."""

import re

import pytest
import torch

from profit_edu.packed import compare_with_engine, export_onnx, onnx_session, quantize_image, run_onnx

from .test_packed_engine import program_of, random_images

pytest.importorskip("onnx", reason="the onnx package is not installed (pip install onnx)")
pytest.importorskip("onnxruntime", reason="onnxruntime cannot be imported (pip install onnxruntime)")


@pytest.mark.parametrize("builder", ["mobilenet_v2", "mobilenet_v3_small"])
def test_onnxruntime_agrees_with_the_engine(builder, tmp_path):
    import onnx

    program = program_of(builder)
    path = tmp_path / "m.onnx"
    blob = export_onnx(program, path)
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert model.opset_import[0].version >= 13
    session = onnx_session(blob, threads=1)
    result = compare_with_engine(program, quantize_image(random_images(8, seed=3), program), session)
    assert result["max_steps"] <= 1.0, result
    assert result["top1_agreement"] == 100.0


def test_onnx_weights_are_the_engines_integer_codes():
    from onnx import TensorProto, load_from_string, numpy_helper

    program = program_of("mobilenet_v2")
    model = load_from_string(export_onnx(program))
    # the export adds one weight initializer "w_<n>" per conv/linear, walking the program's ops in order
    weights = [t for t in model.graph.initializer if re.fullmatch(r"w_\d+", t.name)]
    assert len(weights) == len(program.convs())
    # int8 codes, behind DequantizeLinear (fused convs) or a Cast (the exact wide-output convs)
    assert {t.data_type for t in weights} == {TensorProto.INT8}
    for tensor, op in zip(weights, program.convs()):
        codes = torch.from_numpy(numpy_helper.to_array(tensor).astype("int64"))
        assert torch.equal(codes.reshape(op.weight.shape), op.weight.to(torch.int64)), op.name


def test_run_onnx_returns_real_logits():
    program = program_of("mobilenet_v2")
    logits = run_onnx(onnx_session(export_onnx(program), threads=1),
                      quantize_image(random_images(2), program))
    assert logits.shape == (2, 10) and logits.dtype == torch.float64


@pytest.mark.parametrize("conv_integer", [False, True])
def test_exact_export_reproduces_every_engine_code(conv_integer, monkeypatch):
    import onnx

    from profit_edu.packed import IntegerEngine, onnx_export

    if conv_integer:  # the fallback for layers whose accumulator could pass 2**24
        monkeypatch.setattr(onnx_export, "FLOAT32_EXACT", 0)
    program = program_of("mobilenet_v3_small")
    graph = onnx_export._Graph(program)  # exact=True, the default
    model = graph.build()
    assert any(n.op_type == "ConvInteger" for n in model.graph.node) == conv_integer
    names = {}
    for name in program.tensors:
        if name != "image" and program.tensors[name].kind != "logits":
            value = graph.int_value.get(name) or graph.code_value[name]  # uint8 (+128 if signed) or float64
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(value))
            names[name] = value
    session = onnx_session(model.SerializeToString(), threads=1)
    codes = quantize_image(random_images(4, seed=7), program)
    got = dict(zip(names, session.run(list(names.values()), {"image": codes.to(torch.int8).numpy()})))
    want = IntegerEngine(program).run(codes, keep_all=True)
    for name, value in got.items():
        zero = 128 if name in graph.int_value and program.tensors[name].lo < 0 else 0
        assert torch.equal(torch.from_numpy(value.astype("float64")).reshape(want[name].shape) - zero,
                           want[name].double()), name


def test_onnxruntime_fuses_the_integer_convolutions(tmp_path):
    import onnx
    import onnxruntime as ort

    program = program_of("mobilenet_v2")
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(export_onnx(program), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    eight_bit = [op for op in program.convs() if program.tensors[op.output].kind == "codes" and not op.linear]
    assert ops.count("QLinearConv") == len(eight_bit)  # every conv with 8-bit codes out runs as an integer kernel


def test_fast_export_still_classifies_like_the_engine():
    program = program_of("mobilenet_v2")
    session = onnx_session(export_onnx(program, exact=False), threads=1)
    result = compare_with_engine(program, quantize_image(random_images(8, seed=4), program), session)
    assert result["top1_agreement"] == 100.0
