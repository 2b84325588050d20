"""The packed model file (``.pqm``): safetensors holding bit-packed weights, plus the program as JSON.

Layout (a valid `safetensors <https://huggingface.co/docs/safetensors>`_ file: an 8-byte little-endian header
length, a JSON header, then raw tensor bytes; nothing is ever unpickled)::

    tensors                                    (every layer's values, concatenated in program order)
      weights   uint8   the weight codes of every conv/linear layer, each layer bit-packed on its own
                        (:func:`~profit_edu.packed.bitpack.pack`) at its weight bit width, signed codes stored
                        offset by K = 2**(b-1) - 1 ("offset binary": -K..K -> 0..2K); exactly ceil(n * b / 8)
                        bytes per layer
      bias      int32   per output channel: the folded int32 bias (accumulator units)
      m0        int32   per output channel: the fixed-point multiplier, in [2**30, 2**31)
      shift     uint8   per output channel: the shift, in 1..62
    __metadata__ (strings)
      format    "profit-edu-packed"
      version   "2"
      program   base64 of the zlib-compressed UTF-8 JSON (plain, the header was most of a 2-bit file's
                overhead; ``benchmarks/packed.py`` reports header_bytes) of: architecture (builder name + kwargs),
                input size, normalisation, class names, the input tensor, and for every operation its type, name
                (= its output tensor's name), input names, the output tensor (kind, scale, offset, code range,
                channels), bit width, shape, pre-activation step, stride/padding/groups when not 1/0/1, and
                per-tensor (m0, shift)
      sha256    hex SHA-256 of the program JSON's UTF-8 bytes followed by the raw tensor bytes

Loading (:func:`load_packed`) checks, before anything runs: the header length, the header JSON, format and
version, the SHA-256 (so any flipped bit in the program or the tensor bytes is caught), that the tensor table
has exactly the four tensors above with the right dtypes and lengths, every field of the program (types and
ranges), every code range, and the int32 accumulator bounds (:func:`~profit_edu.packed.program.check_program`).
Every problem is a :class:`PackedFormatError` (a ``ValueError``) that names the file and the problem.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as safetensors_load
from torch import Tensor

from ..atomic import atomic_write_bytes
from .bitpack import PACK_BITS, pack, packed_size, unpack
from .program import (
    Add,
    Conv,
    Pool,
    Program,
    Rescale,
    SEMul,
    TensorSpec,
    UnsupportedBitsError,
    check_program,
)

__all__ = ["FORMAT", "VERSION", "PackedFormatError", "load_packed", "packed_bytes", "read_packed", "save_packed"]

FORMAT = "profit-edu-packed"
VERSION = 2  # 1 stored the program JSON uncompressed
MAX_PROGRAM_BYTES = 16 * 2**20  # a decompressed program larger than this is refused (no zip bombs)
TENSOR_DTYPES = {"weights": torch.uint8, "bias": torch.int32, "m0": torch.int32, "shift": torch.uint8}
MAX_HEADER = 64 * 2**20
MAX_FILE_BYTES = 512 * 2**20  # a packed 4-bit MobileNet is a few MB; a bigger "model" is refused unread


class PackedFormatError(ValueError):
    """A packed file is truncated, corrupted, from another format version, or inconsistent."""


# --------------------------------------------------------------------------------------------
# Program <-> JSON and tensors
# --------------------------------------------------------------------------------------------
CONV_DEFAULTS = {"act": "clamp", "frac_bits": 0, "stride": 1, "padding": 0, "groups": 1, "linear": False}


def _spec_dict(spec: TensorSpec) -> dict[str, Any]:
    d = spec.to_dict()
    return {k: v for k, v in d.items() if not (k in ("bits", "mode") and v is None)}


def _op_dict(op: Any, spec: TensorSpec) -> dict[str, Any]:
    if op.output != op.name:
        raise ValueError(f"{op.kind} {op.name!r}: the file format names each op's output after the op, got "
                         f"output {op.output!r}")
    if isinstance(op, Conv):
        d = {"op": "conv", "name": op.name, "input": op.input, "out": _spec_dict(spec), "shape": list(op.weight.shape),
             "bits": op.weight_bits, "pre_step": op.pre_step}
        fields = {"act": op.act, "frac_bits": op.frac_bits, "stride": op.stride, "padding": op.padding,
                  "groups": op.groups, "linear": op.linear}
        return d | {k: v for k, v in fields.items() if v != CONV_DEFAULTS[k]}
    base = {"op": op.kind, "name": op.name, "out": _spec_dict(spec), "m0": op.m0, "shift": op.shift}
    if isinstance(op, Add):
        return base | {"skip": op.skip, "branch": op.branch}
    if isinstance(op, SEMul):
        return base | {"input": op.input, "gate": op.gate, "zero": op.zero, "zero_bits": op.zero_bits}
    return base | {"input": op.input}


def program_to_json(program: Program) -> tuple[str, dict[str, Tensor]]:
    """The program's JSON text and its four tensors (see the module docstring).

    Raises:
        ValueError: an invalid program (:func:`~profit_edu.packed.program.check_program`), e.g. class names that
            do not fit the model's outputs.
    """
    check_program(program)
    weights, bias, m0, shift = [], [], [], []
    for op in program.convs():
        k = 2 ** (op.weight_bits - 1) - 1
        weights.append(pack(op.weight.reshape(-1) + k, op.weight_bits))
        bias.append(op.bias)
        m0.append(op.m0)
        shift.append(op.shift)
    tensors = {
        "weights": torch.cat(weights) if weights else torch.zeros(0, dtype=torch.uint8),
        "bias": torch.cat(bias).to(torch.int32),
        "m0": torch.cat(m0).to(torch.int32),
        "shift": torch.cat(shift).to(torch.uint8),
    }
    doc = {
        "arch": program.arch, "input_size": list(program.input_size), "mean": list(program.mean),
        "std": list(program.std), "classes": program.classes, "input": _spec_dict(program.input),
        "output": program.output, "ops": [_op_dict(op, program.tensors[op.output]) for op in program.ops],
    }
    return json.dumps(doc, separators=(",", ":"), allow_nan=False), tensors


class _Reader:
    """Typed access to a JSON object, raising PackedFormatError with the path of the bad field."""

    def __init__(self, doc: object, where: str) -> None:
        if not isinstance(doc, dict):
            raise PackedFormatError(f"{where} must be a JSON object, got {type(doc).__name__}")
        self.doc, self.where = doc, where

    def keys(self, *names: str, optional: tuple[str, ...] = ()) -> None:
        extra = sorted(set(self.doc) - set(names) - set(optional))
        missing = sorted(set(names) - set(self.doc))
        if extra or missing:
            raise PackedFormatError(f"{self.where}: unexpected keys {extra}, missing keys {missing}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.doc:
            if default is not ...:
                return default
            raise PackedFormatError(f"{self.where}: missing key {key!r}")
        v = self.doc[key]
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise PackedFormatError(f"{self.where}.{key}: expected {kind}, got a bool")
        if not isinstance(v, kind):
            raise PackedFormatError(f"{self.where}.{key}: expected {kind}, got {type(v).__name__}")
        return v

    def int(self, key: str, default: Any = ...) -> int:
        return self.get(key, int, default)

    def num(self, key: str) -> float:
        v = float(self.get(key, (int, float)))
        if not math.isfinite(v):
            raise PackedFormatError(f"{self.where}.{key}: must be finite")
        return v

    def str(self, key: str, default: Any = ...) -> str:
        return self.get(key, str, default)

    def nums(self, key: str, n: int) -> list[float]:
        v = self.get(key, list)
        if len(v) != n or not all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v):
            raise PackedFormatError(f"{self.where}.{key}: expected {n} numbers, got {v!r}")
        return [float(e) for e in v]


def _tensor_spec(doc: object, where: str) -> TensorSpec:
    r = _Reader(doc, where)
    r.keys("kind", "scale", "offset", "lo", "hi", "channels", optional=("bits", "mode"))
    bits = r.get("bits", int, None)
    mode = r.get("mode", str, None)
    return TensorSpec(r.str("kind"), r.num("scale"), r.num("offset"), r.int("lo"), r.int("hi"), r.int("channels"),
                      bits, mode)


def _slice(t: Tensor, start: int, n: int, what: str) -> Tensor:
    if start + n > t.numel():
        raise PackedFormatError(f"tensor {what!r} has {t.numel()} values, the program needs more than that")
    return t[start:start + n]


def _check_tensors(tensors: dict[str, Tensor]) -> None:
    """The packed file's tensors: exactly :data:`TENSOR_DTYPES`, each 1-D of its dtype."""
    if set(tensors) != set(TENSOR_DTYPES):
        raise PackedFormatError(f"expected tensors {sorted(TENSOR_DTYPES)}, got {sorted(tensors)}")
    for name, dtype in TENSOR_DTYPES.items():
        if tensors[name].dtype != dtype or tensors[name].dim() != 1:
            raise PackedFormatError(f"tensor {name!r} must be 1-D {dtype}, got {tensors[name].dtype} "
                                    f"{tuple(tensors[name].shape)}")


def _read_conv(o: _Reader, i: int, tensors: dict[str, Tensor], at: dict[str, int]) -> Conv:
    """A conv op: its fields from JSON, its codes and per-channel integers from the tensors at ``at``'s offsets
    (which it advances)."""
    o.keys("op", "name", "input", "out", "shape", "bits", "pre_step", optional=tuple(CONV_DEFAULTS))
    name = o.str("name")
    shape = [int(v) for v in o.nums("shape", 4)]
    bits = o.int("bits")
    if bits not in PACK_BITS:
        raise UnsupportedBitsError(f"program.ops[{i}]: weight bits {bits} are not supported (one of {PACK_BITS})")
    if min(shape) < 1 or math.prod(shape) > 2**28:
        raise PackedFormatError(f"program.ops[{i}]: bad weight shape {shape}")
    n = math.prod(shape)
    nbytes = packed_size(n, bits)
    codes = unpack(_slice(tensors["weights"], at["weights"], nbytes, "weights"), bits, n) - (2 ** (bits - 1) - 1)
    at["weights"] += nbytes
    c_at, out_ch = at["channels"], shape[0]
    bias, m0, shift = (_slice(tensors[k], c_at, out_ch, k).to(torch.int64) for k in ("bias", "m0", "shift"))
    at["channels"] += out_ch
    d = CONV_DEFAULTS
    return Conv(name, o.str("input"), name, codes.reshape(shape), bits, bias, m0, shift,
                o.num("pre_step"), o.str("act", d["act"]), o.int("frac_bits", d["frac_bits"]),
                o.int("stride", d["stride"]), o.int("padding", d["padding"]),
                o.int("groups", d["groups"]), o.get("linear", bool, d["linear"]))


def _read_op(o: _Reader, i: int, tensors: dict[str, Tensor], at: dict[str, int]) -> Any:
    """One operation of ``program.ops`` (conv, rescale, pool, add, semul)."""
    kind, name = o.str("op"), o.str("name")
    if kind == "conv":
        return _read_conv(o, i, tensors, at)
    if kind in ("rescale", "pool"):
        o.keys("op", "name", "input", "out", "m0", "shift")
        cls = Rescale if kind == "rescale" else Pool
        return cls(name, o.str("input"), name, o.int("m0"), o.int("shift"))
    if kind == "add":
        o.keys("op", "name", "skip", "branch", "out", "m0", "shift")
        return Add(name, o.str("skip"), o.str("branch"), name, o.int("m0"), o.int("shift"))
    if kind == "semul":
        o.keys("op", "name", "input", "gate", "out", "zero", "zero_bits", "m0", "shift")
        return SEMul(name, o.str("input"), o.str("gate"), name, o.int("zero"), o.int("zero_bits"),
                     o.int("m0"), o.int("shift"))
    raise PackedFormatError(f"program.ops[{i}]: unknown operation {kind!r}")


def program_from_json(text: str, tensors: dict[str, Tensor]) -> Program:
    """Rebuild and validate a program from its JSON and tensors (inverse of :func:`program_to_json`).

    Raises:
        PackedFormatError: any missing, extra, ill-typed or inconsistent field.
        UnsupportedBitsError, AccumulatorOverflowError: from :func:`~profit_edu.packed.program.check_program`.
    """
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise PackedFormatError(f"the program metadata is not valid JSON: {err}") from err
    r = _Reader(doc, "program")
    r.keys("arch", "input_size", "mean", "std", "classes", "input", "output", "ops")
    h, w = (int(v) for v in r.nums("input_size", 2))
    specs = {"image": _tensor_spec(r.get("input", dict), "program.input")}
    classes = r.get("classes", (list, type(None)))
    if classes is not None and not all(isinstance(c, str) for c in classes):
        raise PackedFormatError("program.classes must be a list of strings")
    _check_tensors(tensors)
    ops: list[Any] = []
    at = {"weights": 0, "channels": 0}  # how far the ops read so far reach into the packed tensors
    for i, op_doc in enumerate(r.get("ops", list)):
        o = _Reader(op_doc, f"program.ops[{i}]")
        _, name = o.str("op"), o.str("name")  # "op" first: its absence is the first thing to report
        if name in specs:
            raise PackedFormatError(f"program.ops[{i}]: tensor {name!r} is written twice")
        specs[name] = _tensor_spec(o.get("out", dict), f"program.ops[{i}].out")
        ops.append(_read_op(o, i, tensors, at))
    w_at, c_at = at["weights"], at["channels"]
    if w_at != tensors["weights"].numel() or c_at != tensors["bias"].numel() or \
            not tensors["bias"].numel() == tensors["m0"].numel() == tensors["shift"].numel():
        raise PackedFormatError(f"tensor sizes do not match the program: weights {tensors['weights'].numel()} bytes "
                                f"(program: {w_at}), {tensors['bias'].numel()} biases, {tensors['m0'].numel()} m0, "
                                f"{tensors['shift'].numel()} shifts (program: {c_at} channels)")
    arch = r.get("arch", dict)
    program = Program(specs, ops, r.str("output"), (h, w), tuple(r.nums("mean", 3)), tuple(r.nums("std", 3)),
                      arch, classes)
    try:
        check_program(program)
    except (UnsupportedBitsError, PackedFormatError):
        raise
    except ValueError as err:
        raise type(err)(f"the packed program is invalid: {err}") from err
    return program


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def _digest(program_json: str, data: bytes) -> str:
    return hashlib.sha256(program_json.encode() + data).hexdigest()


def _split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    """The safetensors header (parsed) and the data section of a file's bytes."""
    if len(blob) < 8:
        raise PackedFormatError(f"file has {len(blob)} bytes; a packed file has at least an 8-byte header length")
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER or 8 + n > len(blob):
        raise PackedFormatError(f"header length {n} does not fit the file's {len(blob)} bytes: truncated or damaged")
    try:
        header = json.loads(blob[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise PackedFormatError(f"the header is not valid JSON ({err}): the file is damaged") from err
    if not isinstance(header, dict):
        raise PackedFormatError("the header is not a JSON object: the file is damaged")
    return header, blob[8 + n:]


_SAFETENSORS_DTYPES = {torch.uint8: "U8", torch.int32: "I32"}


def _serialize(tensors: dict[str, Tensor], metadata: dict[str, str]) -> bytes:
    """A safetensors file, written by hand so that the same model always gives the same bytes.

    (``safetensors.torch.save`` writes the metadata in hash-map order, which changes between runs.) Layout: an
    8-byte little-endian header length, the header JSON (sorted keys, padded with spaces to a multiple of 8), then
    the tensors' little-endian bytes, 4-byte values first so every tensor is aligned.
    """
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": metadata}
    chunks, at = [], 0
    for name in names:
        t = tensors[name].contiguous()
        raw = t.numpy().astype(t.numpy().dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [at, at + len(raw)]}
        chunks.append(raw)
        at += len(raw)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def packed_bytes(program: Program) -> bytes:
    """The bytes of a packed file for ``program`` (what :func:`save_packed` writes; deterministic)."""
    text, tensors = program_to_json(program)
    meta = {"format": FORMAT, "version": str(VERSION),
            "program": base64.b64encode(zlib.compress(text.encode(), 9)).decode("ascii")}
    _, data = _split(_serialize(tensors, meta | {"sha256": "0" * 64}))
    return _serialize(tensors, meta | {"sha256": _digest(text, data)})


def save_packed(program: Program, path: str | os.PathLike) -> int:
    """Write ``program`` to a packed file; returns its size in bytes (see the module docstring)."""
    blob = packed_bytes(program)
    atomic_write_bytes(path, blob)
    return len(blob)


def _decompress_program(packed_text: str) -> str:
    """The program JSON text from the metadata's base64 of zlib; bounded, so a hostile file cannot exhaust memory."""
    try:
        compressed = base64.b64decode(packed_text, validate=True)
        inflater = zlib.decompressobj()
        raw = inflater.decompress(compressed, MAX_PROGRAM_BYTES)
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            raise PackedFormatError(f"the program is truncated, followed by junk, or larger than "
                                    f"{MAX_PROGRAM_BYTES} bytes")
        return raw.decode("utf-8")
    except (binascii.Error, zlib.error, UnicodeDecodeError) as err:
        raise PackedFormatError(f"the program metadata is not base64 of zlib-compressed UTF-8 JSON: {err}") from err


def read_packed(blob: bytes, *, source: str = "packed file") -> Program:
    """Validate and load a packed file's bytes (see :func:`load_packed`)."""
    try:
        header, data = _split(blob)
        meta = header.get("__metadata__")
        if not isinstance(meta, dict):
            raise PackedFormatError("no __metadata__ in the header: not a profit-edu packed file")
        if meta.get("format") != FORMAT:
            raise PackedFormatError(f"format is {meta.get('format')!r}, expected {FORMAT!r}: not a packed file")
        version = meta.get("version")
        if not isinstance(version, str):
            raise PackedFormatError(f"__metadata__.version must be a string such as {str(VERSION)!r} (safetensors "
                                    f"metadata holds strings only), got the {type(version).__name__} {version!r}: "
                                    "the file was not written by profit-edu pack")
        if version != str(VERSION):
            raise PackedFormatError(f"format version {version!r}; this profit-edu reads version {VERSION}"
                                    " only: re-pack the model with this version")
        packed_text, digest = meta.get("program"), meta.get("sha256")
        if not isinstance(packed_text, str) or not isinstance(digest, str):
            raise PackedFormatError("the metadata lacks 'program' or 'sha256'")
        text = _decompress_program(packed_text)
        if _digest(text, data) != digest:
            raise PackedFormatError("SHA-256 mismatch: the file is corrupted (a changed byte) or was edited")
        try:
            tensors = safetensors_load(blob)
        except Exception as err:  # safetensors raises its own error types for malformed tables
            raise PackedFormatError(f"the tensor table is malformed: {err}") from err
        return program_from_json(text, tensors)
    except ValueError as err:
        raise type(err)(f"{source}: {err}") from err


def load_packed(path: str | os.PathLike) -> Program:
    """Read a packed file, validate everything (module docstring), and return its program.

    Raises:
        PackedFormatError: missing or not a regular file, too large, truncated, corrupted (SHA-256), wrong format
            or version, inconsistent file (class names that do not fit the outputs included).
        UnsupportedBitsError, AccumulatorOverflowError: a program the engine cannot run.
    """
    path = Path(path)
    if not path.exists():
        raise PackedFormatError(f"{path}: no such file")
    if not path.is_file():
        raise PackedFormatError(f"{path}: not a regular file (a directory, device or pipe); pass the .pqm file that "
                                "'profit-edu pack' wrote")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise PackedFormatError(f"{path}: {size:,} bytes, more than a packed model can have ({MAX_FILE_BYTES:,}); "
                                "not a profit-edu packed file")
    return read_packed(path.read_bytes(), source=str(path))
