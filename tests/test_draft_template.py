"""Apple's draft template in its real schema (docs/afm-format.md §8.3): a synthetic template laid out as
the real spec describes (a MIL blob file written by coremltools' own blob writer, the spec's offsets
pointing at its 64-byte records), filled byte for byte as coremltools' own quantisation calls give with
the toolkit's recipe; the spec's checks and their errors."""

import hashlib

import numpy as np
import pytest
import torch
import yaml

from fmlab.errors import FmlabError
from fmlab.export.draft_template import (
    MIL,
    ROLES,
    SPEC,
    TEMPLATE,
    _mil_shapes,
    fill_template,
    load_spec,
    read_filled,
    to_mil,
)
from fmlab.model.config import preset
from fmlab.model.transformer import build_model

pytest.importorskip("coremltools")
CFG = preset("tiny-draft")


def spec_layout(cfg):
    """(MIL name, format, spec shape) per draft weight; the o_proj kernels carry the two size-1 dims of a
    conv kernel, so the squeezed comparison is exercised."""
    for name, shape in _mil_shapes(cfg).items():
        fmt = "linear_4bits" if name.endswith("_embedding") else "fp16" if len(shape) == 1 else "lut_4bits"
        yield name, fmt, (*shape, 1, 1) if name.endswith(".conv.kernel") else tuple(shape)


def role_counts(fmt, shape):
    shape = [d for d in shape if d != 1]
    n = int(np.prod(shape))
    return {
        "fp16": {"values": n},
        "linear_4bits": {"values": n, "scales": shape[-1]},
        "lut_4bits": {"lut_indices": n, "lut_palette": shape[0] // 16 * 16, "scales": shape[0]},
    }[fmt]


def write_blobs(path, cfg, arrays=None):
    """A blob file written by coremltools' `_BlobStorageWriter`: unrelated blobs (not in the spec) between
    the entries, each entry's blobs in reverse role order, zeros unless `arrays[(name, role)]` gives the
    values; returns the spec's `weights_mapping`."""
    from coremltools.libmilstoragepython import _BlobStorageWriter

    writer = _BlobStorageWriter(str(path))
    put = {
        "fp16": lambda w, v: w.write_fp16_data(np.ascontiguousarray(v, np.float16).reshape(-1).view(np.uint16)),
        "int4": lambda w, v: w.write_int4_data(np.asarray(v, np.int8).reshape(-1)),
        "uint4": lambda w, v: w.write_uint4_data(np.asarray(v, np.uint8).reshape(-1)),
    }
    writer.write_float_data(np.linspace(0, 1, 24, dtype=np.float32))  # e.g. a RoPE table
    mapping = {}
    for i, (name, fmt, shape) in enumerate(spec_layout(cfg)):
        counts, blobs = role_counts(fmt, shape), {}
        for role in reversed(ROLES[fmt]):
            values = arrays[name, role] if arrays else np.zeros(counts[role])
            blobs[role] = {"offset": put[ROLES[fmt][role]](writer, values)}
        mapping[name] = {"format": fmt, "shape": list(shape), "blobs": dict(reversed(blobs.items()))}
        if i % 5 == 0:
            writer.write_int32_data(np.arange(3, dtype=np.int32))
    del writer  # the destructor finishes the file
    return mapping


def make_template(cfg, directory):
    """The three template files in `directory`, in Apple's schema."""
    (directory / MIL).write_text("program(1.3)\n// synthetic draft program for fmlab's tests\n")
    mapping = write_blobs(directory / TEMPLATE, cfg)
    spec = {
        "mil_sha256": hashlib.sha256((directory / MIL).read_bytes()).hexdigest(),
        "source_mil": "synthetic://fmlab-tests/model.mil",
        "weights_mapping": mapping,
    }
    (directory / SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
    return {name: directory / name for name in (SPEC, TEMPLATE, MIL)}


def toolkit_arrays(tensors, cfg):
    """What the toolkit stores, derived with coremltools' own quantisation calls (not fmlab's): int4 by
    `linear_quantize_weights.blockwise_compress` (symmetric, one scale per column, fp32); LUTs by
    `palettize_weights.grouped_channelwise_compress` over 16-channel groups with the toolkit's k-means
    call, on float64 weights normalised per output channel; fp16 by numpy when stored."""
    from coremltools.models.neural_network.quantization_utils import _get_kmeans_lookup_table_and_weight
    from coremltools.optimize.coreml._quantization_passes import linear_quantize_weights, palettize_weights

    def kmeans(values):
        return _get_kmeans_lookup_table_and_weight(4, values, force_kmeans1d=True, cluster_dim=1, vector_axis=0)

    arrays = {}
    for name, fmt, _ in spec_layout(cfg):
        w = tensors[name].numpy()
        if fmt == "fp16":
            arrays[name, "values"] = w.astype(np.float16)
        elif fmt == "linear_4bits":
            q = linear_quantize_weights.blockwise_compress(w, 4, "LINEAR_SYMMETRIC", True, [0, 1])
            arrays[name, "values"], arrays[name, "scales"] = q.data, q.scale.astype(np.float16)
        else:
            w64 = w.astype(np.float64)
            scale = np.abs(w64).max(axis=1, keepdims=True)
            lut = palettize_weights.grouped_channelwise_compress(w64 / scale, "CUSTOM", None, 0, 16, kmeans)
            arrays[name, "lut_indices"] = lut.indices
            arrays[name, "lut_palette"] = lut.lut.astype(np.float16)
            arrays[name, "scales"] = scale.astype(np.float16)
    return arrays


def draft_state(seed=0):
    model = build_model(CFG, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.fixture
def template(tmp_path):
    d = tmp_path / "assets"
    d.mkdir()
    return make_template(CFG, d)


def test_fill_is_byte_identical_to_coremltools_with_the_toolkit_recipe(template, tmp_path):
    state = draft_state()
    out = tmp_path / "package"
    out.mkdir()
    info = fill_template(state, CFG, template, out)
    assert info["formats"] == {"fp16": 4 * CFG.num_layers + 1, "linear_4bits": 1, "lut_4bits": 7 * CFG.num_layers}
    assert info["mil_sha256_matches"] and (out / MIL).read_bytes() == template[MIL].read_bytes()
    write_blobs(tmp_path / "expected.bin", CFG, toolkit_arrays(to_mil(state, CFG), CFG))
    filled = (out / "draft_weights.bin").read_bytes()
    assert filled != template[TEMPLATE].read_bytes()
    assert filled == (tmp_path / "expected.bin").read_bytes()  # every blob, and every byte between them


def test_filled_template_reads_back_close_to_the_draft(template, tmp_path):
    state = draft_state(seed=1)
    fill_template(state, CFG, template, tmp_path)
    back = read_filled(tmp_path / "draft_weights.bin", template[SPEC], CFG)
    for k, v in state.items():
        if k != "output.weight":
            assert (back[k] - v).norm() / v.norm() < (2e-3 if v.ndim == 1 else 0.2), k


def test_the_real_schema_is_read(template):
    spec = load_spec(template[SPEC])
    assert spec.source_mil == "synthetic://fmlab-tests/model.mil" and len(spec.mil_sha256) == 64
    by_name = {e.name: e for e in spec.entries}
    o_proj = by_name["decoder.transformer.layer1.self_attention.attention.o_proj.conv.kernel"]
    assert o_proj.format == "lut_4bits" and o_proj.shape == (32, 32, 1, 1)
    assert set(o_proj.offsets) == {"lut_indices", "lut_palette", "scales"}
    assert all(off % 64 == 0 for e in spec.entries for off in e.offsets.values())


def edit_spec(path, change):
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


EMBEDDING = "decoder.emb.token_emb._embedding"
NORM = "decoder.output_norm.scale"
KERNEL = "decoder.transformer.layer0.feed_forward.linear2.kernel"


def _set(name, key, value):
    def change(spec):
        spec["weights_mapping"][name][key] = value

    return change


@pytest.mark.parametrize(
    "change, message",
    [
        (_set(NORM, "format", "int8"), f"{NORM}: unknown format 'int8'"),
        (_set(KERNEL, "shape", [32, "64"]), f"{KERNEL}: shape must be a list of positive integers"),
        (_set(KERNEL, "shape", []), f"{KERNEL}: shape must be a list"),
        (_set(EMBEDDING, "blobs", {"values": {"offset": 64}}), f"{EMBEDDING}: linear_4bits needs blobs values, scales"),
        (_set(NORM, "blobs", {"values": {"offset": -64}}), f"{NORM}: blob 'values' needs a non-negative integer"),
        (_set(NORM, "blobs", {"values": {}}), f"{NORM}: blob 'values' needs a non-negative integer"),
        (lambda spec: spec.pop("weights_mapping"), "no weights_mapping"),
        (lambda spec: spec["weights_mapping"].__setitem__(NORM, [1, 2]), f"{NORM}: expected a mapping"),
    ],
)
def test_spec_errors_name_the_entry(template, change, message):
    edit_spec(template[SPEC], change)
    with pytest.raises(FmlabError, match=f"^{template[SPEC]}: .*" + message.replace("[", r"\[")):
        load_spec(template[SPEC])


def test_shapes_are_compared_without_size_1_dims(template, tmp_path):
    edit_spec(template[SPEC], _set(NORM, "shape", [1, 32, 1]))  # the same squeezed shape: fine
    fill_template(draft_state(), CFG, template, tmp_path)
    edit_spec(template[SPEC], _set(KERNEL, "shape", [64, 32]))  # the transposed shape: an error
    with pytest.raises(
        FmlabError, match=rf"{KERNEL}: the spec's shape is \[64, 32\] but the draft's tensor is \[32, 64\]"
    ):
        fill_template(draft_state(), CFG, template, tmp_path)


def test_a_blob_of_the_wrong_size_or_dtype_is_refused(template, tmp_path):
    spec = yaml.safe_load(template[SPEC].read_text())
    other = "decoder.transformer.layer0.self_attention.norm.scale"  # fp16 of 32 values, like the output norm
    q_scales = spec["weights_mapping"][
        "decoder.transformer.layer0.self_attention.attention.i_proj.qkv_proj.k_proj.kernel"
    ]

    def to(offset):
        return _set(NORM, "blobs", {"values": {"offset": offset}})

    edit_spec(template[SPEC], to(q_scales["blobs"]["scales"]["offset"]))  # fp16 too, but 16 values
    with pytest.raises(
        FmlabError, match=f"{NORM} \\(values\\): blob at .* is fp16 of 32 bytes; the new data is fp16 of 64"
    ):
        fill_template(draft_state(), CFG, template, tmp_path)
    edit_spec(template[SPEC], to(q_scales["blobs"]["lut_indices"]["offset"]))
    with pytest.raises(FmlabError, match="is uint4 of .* the new data is fp16"):
        fill_template(draft_state(), CFG, template, tmp_path)
    edit_spec(template[SPEC], to(spec["weights_mapping"][other]["blobs"]["values"]["offset"] + 64))
    with pytest.raises(FmlabError, match="sentinel"):
        fill_template(draft_state(), CFG, template, tmp_path)


def test_mil_sha256_mismatch_is_a_warning_naming_both_hashes(template, tmp_path):
    template[MIL].write_text("program(1.3)\n// another build of the program\n")
    actual = hashlib.sha256(template[MIL].read_bytes()).hexdigest()
    expected = yaml.safe_load(template[SPEC].read_text())["mil_sha256"]
    with pytest.warns(UserWarning, match=f"sha256 {actual} differs from mil_sha256 {expected} .*source_mil: synthetic"):
        info = fill_template(draft_state(), CFG, template, tmp_path)
    assert info["mil_sha256_matches"] is False
    assert (tmp_path / MIL).read_bytes() == template[MIL].read_bytes()  # copied as it is, like the toolkit


def test_fmlab_s_earlier_schema_is_still_read(template, tmp_path):
    state = draft_state()
    (tmp_path / "new").mkdir()
    fill_template(state, CFG, template, tmp_path / "new")
    legacy = {"values": "data", "scales": "scale", "lut_indices": "indices", "lut_palette": "lut"}

    def to_legacy(spec):
        for e in spec["weights_mapping"].values():
            blobs = {role: b["offset"] for role, b in e.pop("blobs").items()}
            e.pop("shape")
            if e["format"] == "fp16":
                e["offset"] = blobs["values"]
            else:
                e["offsets"] = {legacy[role]: off for role, off in blobs.items()}

    edit_spec(template[SPEC], to_legacy)
    assert all(e.shape is None for e in load_spec(template[SPEC]).entries)
    (tmp_path / "old").mkdir()
    fill_template(state, CFG, template, tmp_path / "old")
    old, new = (tmp_path / d / "draft_weights.bin" for d in ("old", "new"))
    assert old.read_bytes() == new.read_bytes()


def test_an_unknown_weight_name_is_an_error(template, tmp_path):
    def rename(spec):
        spec["weights_mapping"]["decoder.transformer.layer7.feed_forward.norm.scale"] = spec["weights_mapping"].pop(
            NORM
        )

    edit_spec(template[SPEC], rename)
    with pytest.raises(FmlabError, match="no draft tensor for 1 spec entr.*layer7"):
        fill_template(draft_state(), CFG, template, tmp_path)
