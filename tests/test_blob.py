"""MIL blob storage: round trips, the byte layout of docs/afm-format.md §8.2, and coremltools' own writer/reader."""

import struct

import numpy as np
import pytest

from fmlab.errors import FmlabError
from fmlab.export.mil_blob import DTYPES, BlobWriter, overwrite_blob, read_blob, read_index

RNG = np.random.default_rng(0)
SAMPLES = [
    ("fp16", RNG.standard_normal(37).astype(np.float16)),
    ("int4", RNG.integers(-8, 8, 33)),
    ("uint4", RNG.integers(0, 16, 17)),
    ("fp32", RNG.standard_normal(5).astype(np.float32)),
    ("uint1", RNG.integers(0, 2, 13)),
    ("uint2", RNG.integers(0, 4, 5)),
    ("uint3", RNG.integers(0, 8, 11)),
    ("uint6", RNG.integers(0, 64, 9)),
    ("int8", RNG.integers(-128, 128, 7)),
    ("uint8", RNG.integers(0, 256, 64)),
    ("int32", RNG.integers(-1000, 1000, 3)),
]


def write_samples(path):
    with BlobWriter(path) as w:
        return [w.write(values, dtype) for dtype, values in SAMPLES]


def test_round_trip_every_dtype(tmp_path):
    offsets = write_samples(tmp_path / "w.bin")
    entries = read_index(tmp_path / "w.bin")
    assert [e.metadata_offset for e in entries] == offsets
    for entry, (dtype, values) in zip(entries, SAMPLES):
        assert entry.dtype == dtype and entry.count == len(values)
        np.testing.assert_array_equal(read_blob(tmp_path / "w.bin", entry), np.asarray(values))
        np.testing.assert_array_equal(read_blob(tmp_path / "w.bin", entry.metadata_offset), np.asarray(values))


def test_byte_layout_matches_the_spec(tmp_path):
    """Header `count, version=2, 7 reserved`; per blob `0xDEADBEEF, dtype, size, absolute offset,
    reserved`; data right after its 64-byte record; records 64-aligned; no trailing padding."""
    path = tmp_path / "w.bin"
    with BlobWriter(path) as w:
        w.write(np.arange(5, dtype=np.float16), "fp16")  # 10 bytes
        w.write(np.array([-8, 7, 1, 2, -1]), "int4")  # 3 bytes, 4 padding bits
    raw = path.read_bytes()
    assert struct.unpack("<II7Q", raw[:64]) == (2, 2, 0, 0, 0, 0, 0, 0, 0)
    assert struct.unpack("<IIQQ5Q", raw[64:128]) == (0xDEADBEEF, 1, 10, 128, 0, 0, 0, 0, 0)
    assert raw[128:138] == np.arange(5, dtype="<f2").tobytes()
    assert raw[138:192] == bytes(54)  # padding up to the next 64-byte boundary
    assert struct.unpack("<IIQQ5Q", raw[192:256]) == (0xDEADBEEF, 8, 3, 256, 4, 0, 0, 0, 0)
    assert raw[256:] == bytes([0x78, 0x21, 0x0F])  # int4, low nibble first
    assert len(raw) == 259


def test_mil_dtype_codes():
    codes = {name: code for name, (code, _, _) in DTYPES.items()}
    assert (codes["fp16"], codes["fp32"], codes["int4"], codes["uint4"], codes["int8"]) == (1, 2, 8, 11, 4)


def test_identical_to_coremltools_writer_and_readable_by_its_reader(tmp_path):
    milstorage = pytest.importorskip("coremltools.libmilstoragepython")
    theirs = milstorage._BlobStorageWriter(str(tmp_path / "theirs.bin"))
    write = {"fp16": lambda v: theirs.write_fp16_data(v.view(np.uint16)), "fp32": theirs.write_float_data}  # noqa: F821
    for name, t in (("int4", np.int8), ("int8", np.int8), ("int32", np.int32)):
        write[name] = lambda v, f=getattr(theirs, f"write_{name}_data"), t=t: f(v.astype(t))  # noqa: B008
    for name in ("uint1", "uint2", "uint3", "uint4", "uint6", "uint8"):
        write[name] = lambda v, f=getattr(theirs, f"write_{name}_data"): f(v.astype(np.uint8))  # noqa: B008
    their_offsets = [write[dtype](np.asarray(values)) for dtype, values in SAMPLES]
    del theirs, write  # the destructor finishes the file
    our_offsets = write_samples(tmp_path / "ours.bin")
    assert our_offsets == their_offsets
    assert (tmp_path / "ours.bin").read_bytes() == (tmp_path / "theirs.bin").read_bytes()
    reader = milstorage._BlobStorageReader(str(tmp_path / "ours.bin"))
    fp16 = reader.read_fp16_data(our_offsets[0]).view(np.float16)
    np.testing.assert_array_equal(fp16, SAMPLES[0][1])
    np.testing.assert_array_equal(reader.read_int4_data(our_offsets[1]), SAMPLES[1][1])
    np.testing.assert_array_equal(reader.read_uint4_data(our_offsets[2]), SAMPLES[2][1])


def test_reader_rejects_damaged_files(tmp_path):
    path = tmp_path / "w.bin"
    write_samples(path)
    good = path.read_bytes()
    path.write_bytes(good + b"\0")
    with pytest.raises(FmlabError, match="after the last"):
        read_index(path)
    path.write_bytes(good[:64] + b"\0\0\0\0" + good[68:])
    with pytest.raises(FmlabError, match="sentinel"):
        read_index(path)
    path.write_bytes(good[:-1])
    with pytest.raises(FmlabError):
        read_index(path)


def test_overwrite_in_place_checks_dtype_and_size(tmp_path):
    path = tmp_path / "w.bin"
    offsets = write_samples(path)
    with open(path, "r+b") as f:
        overwrite_blob(f, offsets[1], np.full(33, -3), "int4")
        with pytest.raises(FmlabError, match="int4 of 17 bytes"):
            overwrite_blob(f, offsets[1], np.zeros(34), "fp16")
        with pytest.raises(FmlabError, match="sentinel"):
            overwrite_blob(f, offsets[1] + 64, np.zeros(33), "int4")
    np.testing.assert_array_equal(read_blob(path, offsets[1]), np.full(33, -3))
    np.testing.assert_array_equal(read_blob(path, offsets[2]), SAMPLES[2][1])  # neighbours untouched


def test_out_of_range_sub_byte_values_are_errors(tmp_path):
    with BlobWriter(tmp_path / "w.bin") as w, pytest.raises(FmlabError, match="out of range"):
        w.write(np.array([0, 16]), "uint4")
