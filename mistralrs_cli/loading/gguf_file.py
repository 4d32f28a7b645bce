"""Reading the GGUF container: header, metadata and tensor directory, with tensor data memory-mapped.

The layout, constants and type sizes come from the `gguf` package (llama.cpp's own Python
library). We parse the header ourselves instead of using `gguf.GGUFReader` for two reasons:
the reader builds a numpy view per string of every string array (about 200k objects for a
49k-token vocabulary: seconds of load time), and on corrupt input it fails with assertions,
numpy errors or huge allocations. This parser checks every length against the bytes left,
so truncated or random input ends in one `GGUFError` naming the file and the problem.
"""

from __future__ import annotations

import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType

from mistralrs_cli.errors import GGUFError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_ARRAY_DEPTH = 2

# Fixed-size scalar value types: struct format and numpy dtype (little-endian).
_SCALARS: dict[int, tuple[str, str]] = {
    GGUFValueType.UINT8: ("<B", "<u1"),
    GGUFValueType.INT8: ("<b", "<i1"),
    GGUFValueType.UINT16: ("<H", "<u2"),
    GGUFValueType.INT16: ("<h", "<i2"),
    GGUFValueType.UINT32: ("<I", "<u4"),
    GGUFValueType.INT32: ("<i", "<i4"),
    GGUFValueType.FLOAT32: ("<f", "<f4"),
    GGUFValueType.BOOL: ("<?", "<u1"),
    GGUFValueType.UINT64: ("<Q", "<u8"),
    GGUFValueType.INT64: ("<q", "<i8"),
    GGUFValueType.FLOAT64: ("<d", "<f8"),
}


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor directory; `shape` is in torch order (rows first)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        """llama.cpp's name for the tensor's type (Q4_1, F16...)."""
        return GGMLQuantizationType(self.ggml_type).name


class _Cursor:
    """Bounds-checked little-endian reads from a buffer; every failure is a GGUFError."""

    def __init__(self, buf: Any, size: int, origin: str) -> None:
        self.buf, self.size, self.pos, self.origin = buf, size, 0, origin

    def fail(self, what: str) -> GGUFError:
        return GGUFError(f"{self.origin}: {what}")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated or corrupt file ({what} at byte {self.pos} runs past the end)")

    def scalar(self, vtype: int, what: str) -> Any:
        fmt = _SCALARS[vtype][0]
        n = struct.calcsize(fmt)
        self.need(n, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return value

    def u32(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT32, what)

    def u64(self, what: str) -> int:
        return self.scalar(GGUFValueType.UINT64, what)

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not valid UTF-8 (byte {self.pos - n})") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY and depth < _MAX_ARRAY_DEPTH:
            return self.array(what, depth + 1)
        raise self.fail(f"{what}: unknown metadata value type {vtype}")

    def array(self, what: str, depth: int) -> Any:
        etype = self.u32(f"{what} element type")
        count = self.u64(f"{what} element count")
        if etype in _SCALARS:
            dtype = np.dtype(_SCALARS[etype][1])
            self.need(count * dtype.itemsize, what)
            out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos).copy()
            self.pos += count * dtype.itemsize
            return out.astype(bool) if etype == GGUFValueType.BOOL else out
        # Every string or nested array takes at least 8 bytes: reject absurd counts before looping.
        self.need(count * 8, what)
        if etype == GGUFValueType.STRING:
            return self.strings(count, what)
        return [self.value(etype, what, depth) for _ in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings; the hot loop of vocabulary loading (about 100k strings), kept tight."""
        buf, pos, size, out = self.buf, self.pos, self.size, []
        unpack = struct.Struct("<Q").unpack_from
        append = out.append
        try:
            for _ in range(count):
                (n,) = unpack(buf, pos)
                end = pos + 8 + n
                if end > size:
                    break
                append(buf[pos + 8 : end].decode("utf-8"))
                pos = end
        except struct.error:
            pass
        except UnicodeDecodeError:
            raise self.fail(f"{what}: string {len(out)} is not valid UTF-8") from None
        if len(out) != count:
            raise self.fail(f"truncated or corrupt file ({what} item {len(out)} runs past the end)")
        self.pos = pos
        return out


class GGUFFile:
    """An open GGUF file: `metadata`, `tensors` (name -> TensorInfo) and zero-copy tensor bytes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, 2)
                if size == 0:
                    raise GGUFError(f"{self.path}: empty file, not a GGUF model")
                # A private (copy-on-write) mapping is writable, so torch.frombuffer accepts it
                # without a copy; nothing is ever written through it.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except OSError as e:
            raise GGUFError(f"{self.path}: cannot read ({e.strerror or e})") from None
        self.size = size
        self.metadata: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self._parse(_Cursor(self._mm, size, str(self.path)))

    def _parse(self, cur: _Cursor) -> None:
        cur.need(4, "magic")
        magic = bytes(self._mm[0:4])
        if magic != GGUF_MAGIC:
            raise cur.fail(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        cur.pos = 4
        version = cur.u32("version")
        if version not in SUPPORTED_VERSIONS:
            if struct.unpack("<I", struct.pack(">I", version))[0] in SUPPORTED_VERSIONS:
                raise cur.fail("big-endian GGUF files are not supported")
            raise cur.fail(f"unsupported GGUF version {version} (supported: 2, 3)")
        self.version = version
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Each metadata entry takes >= 12 bytes and each tensor entry >= 24: bound the loops.
        cur.need(n_kv * 12 + n_tensors * 24, "header")
        for _ in range(n_kv):
            key = cur.string("metadata key")
            vtype = cur.u32(f"type of {key!r}")
            if key in self.metadata:
                raise cur.fail(f"duplicate metadata key {key!r}")
            self.metadata[key] = cur.value(vtype, f"metadata {key!r}")
        infos = [self._tensor_info(cur) for _ in range(n_tensors)]
        align = self.metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise cur.fail(f"invalid general.alignment {align!r} (must be a power of two)")
        data_start = -(-cur.pos // align) * align
        expected = 0
        for i, (name, shape, gtype, rel, nbytes) in enumerate(infos):
            if name in self.tensors:
                raise cur.fail(f"duplicate tensor {name!r}")
            self._check_layout(cur, infos, i, expected, align)
            start = data_start + rel
            if start + nbytes > self.size:
                raise cur.fail(
                    f"truncated file: tensor {name!r} needs bytes {start}..{start + nbytes}, "
                    f"the file has {self.size}"
                )
            self.tensors[name] = TensorInfo(name, shape, gtype, start, nbytes)
            expected = rel + -(-nbytes // align) * align
        # The last tensor's type and shape must account for the end of the file as well
        # (writers pad it to the alignment, or not at all).
        if infos and self.size - (data_start + expected) >= align:
            name, _, gtype, _, nbytes = infos[-1]
            raise cur.fail(
                f"tensor {name!r} ({GGMLQuantizationType(gtype).name}, {nbytes} bytes) is followed by "
                f"{self.size - data_start - expected} unexplained bytes at the end of the file: "
                "its type or shape does not match its data"
            )

    @staticmethod
    def _check_layout(cur: _Cursor, infos: list, i: int, expected: int, align: int) -> None:
        """llama.cpp's rule: tensors lie in directory order, each at the previous one's end padded to
        `general.alignment`. A wrong offset or a type that does not match the bytes breaks it."""
        name, _, gtype, rel, _ = infos[i]
        if rel % align:
            raise cur.fail(f"tensor {name!r}: data offset {rel} is not a multiple of general.alignment {align}")
        if rel == expected:
            return
        if i == 0:
            raise cur.fail(f"tensor {name!r}: data offset {rel}, expected 0 (the first tensor starts the data)")
        prev, _, ptype, _, pbytes = infos[i - 1]
        described = f"tensor {prev!r} ({GGMLQuantizationType(ptype).name}, {pbytes} bytes)"
        if rel < expected:
            raise cur.fail(f"tensor {name!r}: data offset {rel} overlaps {described}, which ends at {expected}")
        raise cur.fail(
            f"{described} is followed by {rel - expected} unexplained bytes before {name!r}: "
            f"its type or shape does not match its data (or {name!r} has a wrong offset)"
        )

    def _tensor_info(self, cur: _Cursor) -> tuple[str, tuple[int, ...], int, int, int]:
        name = cur.string("tensor name")
        n_dims = cur.u32(f"dimension count of {name!r}")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.fail(f"tensor {name!r}: invalid dimension count {n_dims}")
        ne = [cur.u64(f"dimensions of {name!r}") for _ in range(n_dims)]
        gtype = cur.u32(f"type of {name!r}")
        rel = cur.u64(f"offset of {name!r}")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(gtype)]
        except (ValueError, KeyError):
            raise cur.fail(f"tensor {name!r}: unknown ggml type id {gtype}") from None
        if ne[0] % block:
            raise cur.fail(
                f"tensor {name!r}: row length {ne[0]} is not a multiple of the "
                f"{GGMLQuantizationType(gtype).name} block size {block}"
            )
        count = math.prod(ne)  # Python ints: no overflow on corrupt dimensions
        if count > self.size * 8:  # no real type packs more than 8 values per byte
            raise cur.fail(f"tensor {name!r}: impossible shape {ne}")
        nbytes = count // block * type_size
        return name, tuple(reversed(ne)), gtype, rel, nbytes

    def raw(self, name: str) -> torch.Tensor:
        """The tensor's bytes as a uint8 tensor (rows, bytes per row), viewing the mapped file."""
        info = self.tensors[name]
        data = torch.frombuffer(self._mm, dtype=torch.uint8, count=info.nbytes, offset=info.offset)
        rows = math.prod(info.shape[:-1])
        return data.view(rows, info.nbytes // rows)

    def release(self, name: str) -> None:
        """Tell the OS the tensor's pages are no longer needed (they stay readable from the file)."""
        info = self.tensors[name]
        page = mmap.PAGESIZE
        start = -(-info.offset // page) * page
        end = (info.offset + info.nbytes) // page * page
        if end > start and hasattr(self._mm, "madvise"):
            self._mm.madvise(mmap.MADV_DONTNEED, start, end - start)

    def get(self, key: str, default: Any = None) -> Any:
        """A metadata value, or `default`."""
        return self.metadata.get(key, default)
