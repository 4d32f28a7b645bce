"""The GGUF container parser: agreement with gguf.GGUFReader, and one-line errors on bad input (fuzzed)."""

from __future__ import annotations

import random
import struct

import gguf
import numpy as np
import pytest

from mistralrs_cli.errors import GGUFError
from mistralrs_cli.loading.gguf_file import GGUFFile
from tests.oracles.gguf_files import write_gguf

V = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory):
    """A file with every metadata value type, nested arrays, and tensors of several types."""
    meta = {
        "general.name": (V.STRING, "tiny ünïcödé"),
        "test.u8": (V.UINT8, 7),
        "test.i8": (V.INT8, -7),
        "test.u16": (V.UINT16, 700),
        "test.i16": (V.INT16, -700),
        "test.u32": (V.UINT32, 70000),
        "test.i32": (V.INT32, -70000),
        "test.f32": (V.FLOAT32, 0.25),
        "test.bool": (V.BOOL, True),
        "test.u64": (V.UINT64, 2**40),
        "test.i64": (V.INT64, -(2**40)),
        "test.f64": (V.FLOAT64, 1e-300),
        "test.strings": (V.ARRAY, ["a", "", "日本", "b c"]),
        "test.ints": (V.ARRAY, [1, 2, 3]),
        "test.floats": (V.ARRAY, [0.5, 1.5]),
    }
    rng = np.random.default_rng(0)
    tensors = {
        "a.weight": (rng.standard_normal((3, 64)).astype(np.float32), Q.F32),
        "b.weight": (gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), Q.Q8_0), Q.Q8_0),
        "c.weight": (gguf.quants.quantize(rng.standard_normal((2, 256)).astype(np.float32), Q.Q4_1), Q.Q4_1),
    }
    return write_gguf(tmp_path_factory.mktemp("gguf") / "small.gguf", "llama", meta, tensors)


def test_parser_agrees_with_gguf_reader(small_gguf):
    ours = GGUFFile(small_gguf)
    ref = gguf.GGUFReader(small_gguf)
    for key, field in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        value = field.contents()
        got = ours.metadata[key]
        if isinstance(value, list):
            assert list(got) == pytest.approx(value) if value and not isinstance(value[0], str) else list(got) == value
        elif isinstance(value, float):
            assert got == pytest.approx(value)
        else:
            assert got == value, key
    assert ours.version == 3
    for t in ref.tensors:
        info = ours.tensors[t.name]
        assert info.shape == tuple(int(d) for d in reversed(t.shape.tolist()))
        assert info.ggml_type == t.tensor_type
        assert info.offset == t.data_offset
        assert ours.raw(t.name).numpy().tobytes() == t.data.tobytes()


def _expect_gguf_error(data: bytes, tmp_path, match: str | None = None) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=match) as err:
        GGUFFile(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message


def test_clear_errors_for_bad_headers(small_gguf, tmp_path):
    good = small_gguf.read_bytes()
    _expect_gguf_error(b"", tmp_path, "empty file")
    _expect_gguf_error(b"GGML" + good[4:], tmp_path, "not a GGUF file")
    _expect_gguf_error(good[:4] + struct.pack("<I", 1) + good[8:], tmp_path, "unsupported GGUF version 1")
    _expect_gguf_error(good[:4] + struct.pack(">I", 3) + good[8:], tmp_path, "big-endian")
    _expect_gguf_error(good[:100], tmp_path, "truncated")
    _expect_gguf_error(good[:-10], tmp_path, "truncated file: tensor")
    # A huge tensor count must be rejected up front, not looped over or allocated.
    _expect_gguf_error(good[:8] + struct.pack("<Q", 2**62) + good[16:], tmp_path, "truncated")


def test_unknown_tensor_type_is_named(tmp_path):
    V_ = gguf.GGUFValueType
    data = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 1, 1))
    key = b"general.architecture"
    data += struct.pack("<Q", len(key)) + key + struct.pack("<IQ", V_.STRING, 5) + b"llama"
    name = b"x.weight"
    data += struct.pack("<Q", len(name)) + name + struct.pack("<IQIQ", 1, 32, 99, 0)
    data += bytes(64)
    _expect_gguf_error(bytes(data), tmp_path, "unknown ggml type id 99")


def test_fuzzed_headers_fail_cleanly(small_gguf, tmp_path):
    """Random bytes, truncations and byte flips: a GGUFError or a parse, never another exception."""
    good = small_gguf.read_bytes()
    header_end = 600  # the metadata and tensor directory live in the first few hundred bytes
    rng = random.Random(1234)
    cases = [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) for _ in range(100)]
    cases += [b"GGUF" + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300))) for _ in range(100)]
    cases += [good[:n] for n in range(0, header_end, 7)]
    for _ in range(400):
        flipped = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(4, header_end)] = rng.getrandbits(8)
        cases.append(bytes(flipped))
    path = tmp_path / "fuzz.gguf"
    outcomes = {"parsed": 0, "error": 0}
    for data in cases:
        path.write_bytes(data)
        try:
            GGUFFile(path)
            outcomes["parsed"] += 1
        except GGUFError as e:
            assert "\n" not in str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > len(cases) // 2


def _patched(good: bytes, name: str, field: str, value: int) -> bytes:
    """`good` with tensor `name`'s ggml type or data offset in the directory replaced."""
    data = bytearray(good)
    key = name.encode()
    pos = data.index(struct.pack("<Q", len(key)) + key) + 8 + len(key)
    n_dims = struct.unpack_from("<I", data, pos)[0]
    type_pos = pos + 4 + 8 * n_dims
    if field == "type":
        struct.pack_into("<I", data, type_pos, value)
    else:
        struct.pack_into("<Q", data, type_pos + 4, value)
    return bytes(data)


def test_tensor_layout_is_checked_like_llama_cpp(small_gguf, tmp_path):
    """Offsets aligned, in order, without overlap or gap; a type must account for its bytes."""
    good = small_gguf.read_bytes()
    b = GGUFFile(small_gguf).tensors["b.weight"]
    data_start = GGUFFile(small_gguf).tensors["a.weight"].offset
    rel = b.offset - data_start
    _expect_gguf_error(_patched(good, "b.weight", "offset", rel + 1), tmp_path, "not a multiple of general.alignment 32")
    _expect_gguf_error(_patched(good, "b.weight", "offset", rel - 32), tmp_path, "overlaps tensor 'a.weight'")
    _expect_gguf_error(_patched(good, "b.weight", "offset", rel + 32), tmp_path,
                       "tensor 'a.weight' .* is followed by 32 unexplained bytes before 'b.weight'")
    _expect_gguf_error(_patched(good, "a.weight", "offset", 32), tmp_path, "expected 0")
    # a.weight (3 x 64 F32 = 768 bytes) relabelled Q8_0 would take 204 bytes: the rest is unexplained.
    _expect_gguf_error(_patched(good, "a.weight", "type", int(Q.Q8_0)), tmp_path, "'a.weight' \\(Q8_0, 204 bytes\\)")
    # The last tensor: what follows it must be padding only.
    _expect_gguf_error(_patched(good, "c.weight", "type", int(Q.Q4_0)), tmp_path, "at the end of the file")
    _expect_gguf_error(good + bytes(64), tmp_path, "at the end of the file")
    GGUFFile(small_gguf)  # the untouched file still parses
