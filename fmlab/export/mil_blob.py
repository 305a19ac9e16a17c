"""Core ML's MIL blob-storage file (`weight.bin`, Apple's `adapter_weights.bin`, `draft_weights.bin`):
a streaming writer, an index reader, typed reads and in-place overwrites (docs/afm-format.md §8.2–8.3).

Layout (all little-endian):
- a 64-byte file header: `uint32 count, uint32 version = 2`, then 7 reserved `uint64`;
- per blob, a 64-byte metadata record at a 64-aligned offset: `uint32 sentinel 0xDEADBEEF,
  uint32 mil_dtype, uint64 size_in_bytes, uint64 data_offset (absolute), uint64 padding_bits`, then
  4 more reserved `uint64`. `padding_bits` is the unused bits of the last byte for sub-byte types;
- the data right after its metadata (so also 64-aligned); the next record starts at the next multiple
  of 64. The file ends at the last data byte (no trailing padding).

Sub-byte types are bit-packed least-significant bit first (for 4 bits: low nibble first). This module
matches what `coremltools.libmilstoragepython._BlobStorageWriter` writes byte for byte (tested).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from fmlab.errors import FmlabError

ALIGN = 64
VERSION = 2
SENTINEL = 0xDEADBEEF
_HEADER = struct.Struct("<II7Q")  # 64 bytes
_META = struct.Struct("<IIQQQ4Q")  # 64 bytes

# MIL blob data types: name -> (code, bits per element, numpy storage dtype of decoded values)
DTYPES = {
    "fp16": (1, 16, np.float16),
    "fp32": (2, 32, np.float32),
    "uint8": (3, 8, np.uint8),
    "int8": (4, 8, np.int8),
    "bf16": (5, 16, np.uint16),
    "int16": (6, 16, np.int16),
    "uint16": (7, 16, np.uint16),
    "int4": (8, 4, np.int8),
    "uint1": (9, 1, np.uint8),
    "uint2": (10, 2, np.uint8),
    "uint4": (11, 4, np.uint8),
    "uint3": (12, 3, np.uint8),
    "uint6": (13, 6, np.uint8),
    "int32": (14, 32, np.int32),
    "uint32": (15, 32, np.uint32),
}
_BY_CODE = {code: name for name, (code, _, _) in DTYPES.items()}


def align(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


@dataclass(frozen=True)
class BlobEntry:
    index: int
    metadata_offset: int  # what a MIL program (and Apple's spec) refers to
    dtype: str
    size: int  # bytes of data
    data_offset: int
    padding_bits: int = 0

    @property
    def count(self) -> int:
        """Number of elements."""
        return (self.size * 8 - self.padding_bits) // DTYPES[self.dtype][1]


def _dtype(name: str):
    if name not in DTYPES:
        raise FmlabError(f"unknown MIL blob dtype {name!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def pack_bits(values: np.ndarray, bits: int) -> tuple[bytes, int]:
    """Pack integers (two's complement for signed) into `bits`-wide fields, LSB first; returns
    (bytes, padding bits in the last byte)."""
    v = np.asarray(values).reshape(-1)
    if 8 % bits == 0:  # 1, 2, 4 bits: whole fields per byte, without a bit stream (the int4 embedding)
        per = 8 // bits
        padding = (-v.size) % per
        fields = np.concatenate([v.astype(np.uint8) & ((1 << bits) - 1), np.zeros(padding, np.uint8)])
        fields = fields.reshape(-1, per)
        packed = np.zeros(len(fields), np.uint8)
        for j in range(per):
            packed |= fields[:, j] << np.uint8(j * bits)
        return packed.tobytes(), padding * bits
    v = v.astype(np.int64) & ((1 << bits) - 1)
    fields = ((v[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)  # bit stream, LSB first
    padding = (-fields.size) % 8
    return np.packbits(np.concatenate([fields, np.zeros(padding, np.uint8)]), bitorder="little").tobytes(), padding


def unpack_bits(data: bytes, bits: int, count: int, signed: bool) -> np.ndarray:
    raw = np.frombuffer(data, np.uint8)
    if 8 % bits == 0:
        v = ((raw[:, None] >> (np.arange(8 // bits, dtype=np.uint8) * bits)) & ((1 << bits) - 1)).reshape(-1)[:count]
    else:
        stream = np.unpackbits(raw, bitorder="little")[: count * bits]
        v = (stream.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(1)
    v = v.astype(np.int16)
    if signed:
        v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v.astype(np.int8 if signed else np.uint8)


def encode(values, dtype: str) -> tuple[bytes, int]:
    """Values -> (raw bytes, padding bits) for a blob of `dtype`."""
    _, bits, np_dtype = _dtype(dtype)
    values = np.asarray(values.detach().cpu().numpy() if hasattr(values, "detach") else values)
    if bits < 8:
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if dtype.startswith("int") else (0, (1 << bits) - 1)
        if values.size and (values.min() < lo or values.max() > hi):
            raise FmlabError(f"values out of range [{lo}, {hi}] for MIL dtype {dtype}")
        return pack_bits(values, bits)
    return np.ascontiguousarray(values, dtype=np.dtype(np_dtype).newbyteorder("<")).tobytes(), 0


def decode(data: bytes, entry: BlobEntry) -> np.ndarray:
    _, bits, np_dtype = DTYPES[entry.dtype]
    if bits < 8:
        return unpack_bits(data, bits, entry.count, signed=entry.dtype.startswith("int"))
    return np.frombuffer(data, dtype=np.dtype(np_dtype).newbyteorder("<")).copy()


class BlobWriter:
    """Write blobs one at a time to `path` (streaming: nothing is held in memory but the current blob).

    >>> with BlobWriter(path) as w:
    ...     offset = w.write(array, "fp16")     # metadata offset, as coremltools returns it
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: BinaryIO = open(self.path, "wb")
        self._f.write(_HEADER.pack(0, VERSION, *[0] * 7))
        self.entries: list[BlobEntry] = []
        self._end = _HEADER.size

    def write(self, values, dtype: str = "fp16") -> int:
        data, padding = encode(values, dtype)
        meta = align(self._end)
        self._f.write(b"\0" * (meta - self._end))
        entry = BlobEntry(len(self.entries), meta, dtype, len(data), meta + _META.size, padding)
        self._f.write(_META.pack(SENTINEL, DTYPES[dtype][0], entry.size, entry.data_offset, padding, *[0] * 4))
        self._f.write(data)
        self._end = entry.data_offset + entry.size
        self.entries.append(entry)
        return meta

    def close(self) -> None:
        if self._f.closed:
            return
        self._f.seek(0)
        self._f.write(_HEADER.pack(len(self.entries), VERSION, *[0] * 7))
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metadata(f: BinaryIO, offset: int, source: str = "blob file") -> BlobEntry:
    f.seek(offset)
    raw = f.read(_META.size)
    if len(raw) < _META.size:
        raise FmlabError(f"{source}: blob metadata at offset {offset} runs past the end of the file")
    sentinel, code, size, data_offset, padding, *_ = _META.unpack(raw)
    if sentinel != SENTINEL:
        raise FmlabError(f"{source}: no blob at offset {offset} (sentinel {sentinel:#x}, expected {SENTINEL:#x})")
    if code not in _BY_CODE:
        raise FmlabError(f"{source}: blob at offset {offset} has unknown MIL dtype code {code}")
    return BlobEntry(-1, offset, _BY_CODE[code], size, data_offset, padding)


def read_index(path: str | Path) -> list[BlobEntry]:
    """Every blob of a blob file, in file order, with its offsets; checks the header, each sentinel,
    64-byte alignment, that data follows its metadata, and that the file ends at the last blob."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(_HEADER.size)
        if len(raw) < _HEADER.size:
            raise FmlabError(f"{path}: too short for a MIL blob file ({len(raw)} bytes)")
        count, version, *_ = _HEADER.unpack(raw)
        if version != VERSION:
            raise FmlabError(f"{path}: MIL blob storage version {version}, expected {VERSION}")
        file_size = f.seek(0, 2)
        entries, offset = [], _HEADER.size
        for i in range(count):
            e = read_metadata(f, align(offset), str(path))
            if e.data_offset != e.metadata_offset + _META.size or e.data_offset + e.size > file_size:
                raise FmlabError(
                    f"{path}: blob {i} has data at {e.data_offset} (size {e.size}); expected it "
                    f"right after its metadata at {e.metadata_offset} and inside the file"
                )
            entries.append(BlobEntry(i, e.metadata_offset, e.dtype, e.size, e.data_offset, e.padding_bits))
            offset = e.data_offset + e.size
        if offset != file_size:
            raise FmlabError(f"{path}: {file_size - offset} bytes after the last of {count} blobs")
    return entries


def read_blob(path: str | Path, entry_or_offset: BlobEntry | int, with_entry: bool = False):
    """Decoded values of one blob (given its entry or metadata offset) as a flat array;
    `with_entry` returns (entry, values) so callers see the stored MIL dtype."""
    with open(path, "rb") as f:
        entry = entry_or_offset
        if not isinstance(entry, BlobEntry):
            entry = read_metadata(f, entry_or_offset, str(path))
        f.seek(entry.data_offset)
        values = decode(f.read(entry.size), entry)
    return (entry, values) if with_entry else values


def overwrite_blob(f: BinaryIO, metadata_offset: int, values, dtype: str, source: str = "blob file") -> BlobEntry:
    """Replace the data of an existing blob in place (a template fill): the record at `metadata_offset`
    must have the sentinel, `dtype`, and exactly the byte size of the new data."""
    entry = read_metadata(f, metadata_offset, source)
    data, padding = encode(values, dtype)
    if entry.dtype != dtype or entry.size != len(data) or entry.padding_bits != padding:
        raise FmlabError(
            f"{source}: blob at {metadata_offset} is {entry.dtype} of {entry.size} bytes; "
            f"the new data is {dtype} of {len(data)} bytes"
        )
    f.seek(entry.data_offset)
    f.write(data)
    return entry
