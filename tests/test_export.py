""".fmadapter export and verification (docs/afm-format.md §8) on tiny random models; afm-3b sizes without weights."""

import hashlib
import json
import shutil
import struct
import time

import numpy as np
import pytest
import torch
import yaml
from helpers import randomize_lora
from test_draft_template import make_template

from fmlab.checkpoints.apple_format import save_adapter, to_apple
from fmlab.cli import main
from fmlab.errors import FmlabError
from fmlab.export.mil_blob import read_blob, read_index
from fmlab.export.package import (
    BASE_SIGNATURE,
    METADATA_KEYS,
    adapter_layout,
    check_adapter_name,
    check_runtime_lora,
    export_fmadapter,
    metadata,
    metadata_text,
    qk_permute,
    qk_unpermute,
    read_adapter_weights,
    write_adapter_weights,
)
from fmlab.export.verify import verify_fmadapter
from fmlab.model.config import LoRAConfig, preset, to_tamm_json
from fmlab.model.transformer import apply_rope, build_model, rope_tables

# --- fixtures: a tiny assets directory in Apple's layout ---------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("assets")
    cfg, dcfg = preset("tiny"), preset("tiny-draft")
    base = build_model(cfg, seed=0)
    (d / "base-model-config.json").write_text(json.dumps(to_tamm_json(cfg)))
    torch.save(to_apple(base.state_dict(), cfg), d / "base-model.pt")
    draft = build_model(dcfg, seed=1)
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if "norm" in name:  # non-trivial norms, so they must survive the export
                p.uniform_(0.5, 1.5)
    (d / "draft-model-config.json").write_text(json.dumps(to_tamm_json(dcfg)))
    torch.save(to_apple(draft.state_dict(), dcfg), d / "draft-model.pt")
    randomize_lora(base, 0.05)
    adapter = save_adapter(base, d.parent / "adapter.pt")
    return {
        "dir": d,
        "cfg": cfg,
        "draft_cfg": dcfg,
        "adapter": adapter,
        "draft": d / "draft-model.pt",
        "lora": {k: v.detach().clone() for k, v in base.state_dict().items() if ".lora_" in k},
    }


@pytest.fixture(scope="module")
def template_dir(assets, tmp_path_factory):
    """The tiny assets plus a synthetic Apple draft template (tests/test_draft_template.py)."""
    pytest.importorskip("coremltools")
    d = tmp_path_factory.mktemp("template") / "assets"
    shutil.copytree(assets["dir"], d)
    make_template(assets["draft_cfg"], d)
    return d


@pytest.fixture(scope="module")
def coreml_package(assets, template_dir, tmp_path_factory):
    """One export with Apple's template and the Core ML draft, in the default layout (the slow part:
    ~3 s of coremltools)."""
    out = tmp_path_factory.mktemp("out")
    return export_fmadapter(
        out,
        "tiny_adapter",
        assets["adapter"],
        template_dir / "draft-model.pt",
        assets=template_dir,
        description="tiny",
        log=lambda *_: None,
    )


def export(assets, out, name="tiny_adapter", **kw):
    kw.setdefault("coreml", False)
    return export_fmadapter(
        out, name, assets["adapter"], kw.pop("draft", None), assets=assets["dir"], log=lambda *_: None, **kw
    )


# --- the QK permutation (§8.2) ------------------------------------------------------------------------


def test_report_draft_table():
    from fmlab.export.report import Report

    report = Report(package=None)
    assert report.draft_table().empty
    report.numbers.update(
        acceptance_fp=0.8,
        adapter_blobs=12,
        **{
            "Core ML (4-bit LUT)": {
                "acceptance": 0.7,
                "acceptance_drop": 0.1,
                "mean_relative_error": 0.05,
                "max_relative_error": 0.1,
            }
        },
    )
    table = report.draft_table()
    assert list(table.index) == ["full precision (fp32)", "Core ML (4-bit LUT)"]
    assert table.loc["Core ML (4-bit LUT)"].tolist() == [0.7, 0.1, 0.05, 0.1]
    assert table.loc["full precision (fp32)", "acceptance"] == 0.8


def test_qk_permutation_is_the_documented_row_map_and_inverts():
    n_heads, hd, r = 3, 8, 2
    w = torch.arange(n_heads * hd * r, dtype=torch.float32).reshape(n_heads * hd, r)
    p = qk_permute(w, n_heads)
    for h in range(n_heads):
        for i in range(hd // 2):
            for j in range(2):
                assert torch.equal(p[h * hd + j * hd // 2 + i], w[h * hd + 2 * i + j])
    assert torch.equal(qk_unpermute(p, n_heads), w)


def test_permuted_rows_with_half_split_rope_equal_interleaved_rope():
    """Why the export permutes: the device's half-split RoPE on permuted rows = fmlab's interleaved RoPE."""
    n_heads, hd, T = 2, 16, 5
    w = torch.randn(n_heads * hd, 12)
    x = torch.randn(1, T, 12)
    cos, sin = rope_tables(torch.arange(T)[None], hd, 10000.0)
    ref = apply_rope((x @ w.t()).view(1, T, n_heads, hd).transpose(1, 2), cos, sin)
    y = (x @ qk_permute(w, n_heads).t()).view(1, T, n_heads, hd).transpose(1, 2)
    y1, y2 = y.chunk(2, -1)
    neox = torch.cat([y1 * cos - y2 * sin, y1 * sin + y2 * cos], -1)
    assert torch.allclose(
        qk_unpermute(neox.transpose(1, 2).reshape(T, -1).t(), n_heads).t(),
        ref.transpose(1, 2).reshape(T, -1),
        atol=1e-5,
    )


# --- layout and size for Apple's afm-3b (no model materialised) ----------------------------------------


def test_afm_3b_canonical_order_and_permuted_tensors():
    layout = adapter_layout(preset("afm-3b"))
    assert len(layout) == 700
    first = [s.apple.split("layer_0.")[1].replace(".adapters.base_adapter", "") for s in layout[:14]]
    assert first == [f"attention.qkv_transform.lora_{i}.{m}_transpose" for i in range(3) for m in "ab"] + [
        f"{p}.{m}_transpose"
        for p in (
            "attention.output_transform",
            "feed_forward.hidden_transform.linear_0",
            "feed_forward.hidden_transform.linear_1",
            "feed_forward.output_transform",
        )
        for m in "ab"
    ]
    seg1 = [s for s in layout if "segment_1" in s.apple]
    assert len(seg1) == 21 * 10 and "segment_1.layer_0.attention.q_transform" in seg1[0].apple
    assert layout[14 * 35].apple == seg1[0].apple  # segment_1 follows all of segment_0
    kinds = {}
    for s in (s for s in layout if s.heads):
        kind = "q_transform" if ".q_transform." in s.apple else s.apple.split(".base_adapter.")[1]
        kinds.setdefault(kind, set()).add((s.heads, s.apple.endswith("b_transpose")))
    assert kinds == {"lora_0.b_transpose": {(16, True)}, "lora_1.b_transpose": {(2, True)}, "q_transform": {(16, True)}}
    assert sum(1 for s in layout if s.heads) == 35 * 2 + 21
    assert layout[0].shape == (32, 2048) and layout[1].shape == (2048, 32) and layout[3].shape == (256, 32)


def test_afm_3b_adapter_weights_is_133312320_bytes_with_700_blobs_in_order(tmp_path):
    cfg = preset("afm-3b")
    layout = adapter_layout(cfg)
    # constant tensors with zero-size storage: tensor i holds the value i, so the order is checkable
    state = {s.fmlab: torch.tensor(float(i)).expand(s.shape[::-1]) for i, s in enumerate(layout)}
    start = time.perf_counter()
    assert write_adapter_weights(state, cfg, tmp_path / "adapter_weights.bin") == 700
    assert time.perf_counter() - start < 30
    path = tmp_path / "adapter_weights.bin"
    assert path.stat().st_size == 133_312_320 == 64 + 700 * 64 + 2 * 66_633_728
    entries = read_index(path)
    assert len(entries) == 700 and struct.unpack("<II", path.read_bytes()[:8]) == (700, 2)
    expected_offset = 64
    with open(path, "rb") as f:
        for i, (e, s) in enumerate(zip(entries, layout)):
            size = 2 * s.shape[0] * s.shape[1]
            assert (e.metadata_offset, e.data_offset) == (expected_offset, expected_offset + 64)
            assert (e.dtype, e.size) == ("fp16", size)
            f.seek(e.data_offset)
            assert np.frombuffer(f.read(2), "<f2")[0] == i
            expected_offset += 64 + e.size


def test_afm_3b_needs_apple_rank_and_alpha():
    check_runtime_lora(preset("afm-3b"))
    for lora in (LoRAConfig(rank=16, alpha=16), LoRAConfig(rank=32, alpha=32), LoRAConfig(targets=("q", "v"))):
        with pytest.raises(FmlabError, match="rank 32, alpha 16"):
            check_runtime_lora(preset("afm-3b", lora=lora))
    check_runtime_lora(preset("tiny"))  # other bases keep their own LoRA settings


# --- metadata and names --------------------------------------------------------------------------------


def test_metadata_keys_values_and_formatting():
    meta = metadata("my_adapter", BASE_SIGNATURE, 32)
    assert tuple(sorted(meta)) == METADATA_KEYS
    assert meta == {
        "adapterIdentifier": "fmadapter-my_adapter-9799725",
        "author": "3P developer",
        "baseModelSignature": BASE_SIGNATURE,
        "creatorDefined": {},
        "description": "",
        "license": "",
        "loraRank": 32,
        "speculativeDecodingDraftTokenCount": 5,
    }
    text = metadata_text(meta)
    assert text.startswith('{\n    "adapterIdentifier": "fmadapter-my_adapter-9799725",\n    "author"')
    assert metadata_text(metadata("x", BASE_SIGNATURE, 32, author="Zoë")).count("Zoë") == 1  # ensure_ascii=False


@pytest.mark.parametrize("name", ["my-adapter", "héllo", "", "a b", "x.y", "名前", "semi;colon"])
def test_bad_adapter_names_are_refused(name):
    with pytest.raises(FmlabError, match="ASCII letters, digits and '_'"):
        check_adapter_name(name)


def test_good_adapter_names():
    assert check_adapter_name("My_Adapter_2") == "My_Adapter_2"
    assert check_adapter_name("shakespeare.fmadapter") == "shakespeare"


# --- adapter round trip on the tiny model ---------------------------------------------------------------


def test_adapter_weights_round_trip(assets, tmp_path):
    cfg, lora = assets["cfg"], assets["lora"]
    write_adapter_weights(lora, cfg, tmp_path / "a.bin")
    back = read_adapter_weights(tmp_path / "a.bin", cfg)
    assert back.keys() == lora.keys()
    assert all(torch.equal(back[k], lora[k].half().float()) for k in lora)
    # B of K is stored transposed and permuted: [out, r] in half-split row order
    spec = next(s for s in adapter_layout(cfg) if s.fmlab == "layers.0.attn.qkv.lora_b.k")
    entry = read_index(tmp_path / "a.bin")[adapter_layout(cfg).index(spec)]
    stored = torch.from_numpy(read_blob(tmp_path / "a.bin", entry)).reshape(spec.shape)
    assert torch.equal(stored, qk_permute(lora[spec.fmlab].half().t(), cfg.num_kv_heads))


# --- export -> verify ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_with_coreml_draft_then_verify(assets, coreml_package):
    pkg = coreml_package
    assert pkg.name == "tiny_adapter.fmadapter"
    # exactly the toolkit's files; fmlab's own beside the package
    assert sorted(p.name for p in pkg.iterdir()) == [
        "adapter_weights.bin",
        "draft.mil",
        "draft_weights.bin",
        "metadata.json",
    ]
    assert sorted(p.name for p in (pkg.parent / "tiny_adapter.fmlab").iterdir()) == [
        "draft.mlpackage",
        "fmlab-manifest.json",
    ]
    assert sorted(p.name for p in pkg.parent.iterdir()) == ["tiny_adapter.fmadapter", "tiny_adapter.fmlab"]
    meta = json.loads((pkg / "metadata.json").read_text())
    sha1 = hashlib.sha1((assets["dir"] / "base-model.pt").read_bytes()).hexdigest()
    assert meta["baseModelSignature"] == sha1 and meta["adapterIdentifier"] == f"fmadapter-tiny_adapter-{sha1[:7]}"
    assert meta["loraRank"] == 4 and meta["description"] == "tiny"
    report = verify_fmadapter(pkg, num_prompts=2, max_new_tokens=16)
    assert report.ok, report.text()
    names = [c.name for c in report.checks if c.ok]
    assert "logits: package adapter vs source checkpoint" in names
    assert "draft.mlpackage: 4-bit grouped-channel palettised" in names
    assert {"package holds exactly the toolkit's files", "manifest checksums"} <= set(names)
    assert "template (int4 embedding + 4-bit LUT)" in report.numbers
    coreml = report.numbers["Core ML (4-bit LUT)"]
    assert 0.02 < coreml["max_relative_error"] < 0.2  # 4-bit: lossy, but not broken
    assert 0 <= coreml["acceptance"] <= 1
    assert report.numbers["adapter_effect"] > 10 * report.numbers["logits_max_abs_diff"]


@pytest.mark.slow
def test_coreml_draft_program_and_weights(assets, coreml_package):
    from fmlab.export.coreml_draft import read_coreml_draft
    from fmlab.export.package import load_draft_state

    state, info = read_coreml_draft(
        coreml_package.parent / "tiny_adapter.fmlab" / "draft.mlpackage", assets["draft_cfg"]
    )
    dcfg = assets["draft_cfg"]
    assert info["palettized"] == 1 + 4 * dcfg.num_layers  # embedding (tied) + 4 matrices per layer
    q_kv_rows = (dcfg.num_heads + 2 * dcfg.num_kv_heads) * dcfg.head_dim
    rows = {dcfg.vocab_size, q_kv_rows, dcfg.hidden_dim, 2 * dcfg.ffn_dim}
    assert set(map(tuple, info["lut_shapes"].values())) == {(n // 16, 1, 16, 1) for n in rows}
    assert "indices:uint4" in info["blob_dtypes"] and info["op_types"]["constexpr_lut_to_dense"] == info["palettized"]
    assert not info["folded_norms"]
    source = load_draft_state(assets["draft"], dcfg)
    for k, v in source.items():
        if v.ndim == 1:  # norms stay fp16
            assert torch.allclose(state[k], v, rtol=1e-3), k
        else:  # each group of 16 rows: <= 16 values
            rows = state[k].reshape(-1, 16 * v.shape[1])
            assert all(len(torch.unique(r)) <= 16 for r in rows), k


def test_coreml_wrapper_matches_the_draft():
    from fmlab.export.coreml_draft import CoreMLDraft

    cfg = preset("tiny-draft")
    draft = build_model(cfg, seed=3).eval()
    with torch.no_grad():
        for name, p in draft.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    ids = torch.randint(0, cfg.vocab_size, (1, 11))
    with torch.no_grad():
        assert torch.allclose(CoreMLDraft(draft.state_dict(), cfg)(ids), draft(ids), atol=1e-5)


def test_verify_detects_a_damaged_adapter(assets, tmp_path):
    pkg = export(assets, tmp_path)
    assert verify_fmadapter(pkg).ok
    path = pkg / "adapter_weights.bin"
    raw = bytearray(path.read_bytes())
    raw[64 * 3 + 10] ^= 0x40  # flip a bit inside the first blob's data
    path.write_bytes(bytes(raw))
    report = verify_fmadapter(pkg)
    failed = {c.name for c in report.checks if c.ok is False}
    assert not report.ok and {"manifest checksums", "adapter tensors == source rounded to fp16"} <= failed
    (pkg / "metadata.json").write_text(json.dumps({"loraRank": 4}))
    report = verify_fmadapter(pkg)
    assert {"metadata keys", "adapterIdentifier"} <= {c.name for c in report.checks if c.ok is False}


# --- safety: names, replacement, atomicity ----------------------------------------------------------


def test_export_replaces_only_a_previous_package(assets, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    first = export(assets, tmp_path, description="one")
    second = export(assets, tmp_path, description="two")
    assert first == second and json.loads((second / "metadata.json").read_text())["description"] == "two"
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "tiny_adapter.fmadapter", "tiny_adapter.fmlab"]
    other = tmp_path / "precious.fmadapter"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(FmlabError, match="not an .fmadapter package"):
        export(assets, tmp_path, name="precious")
    assert (other / "thesis.tex").read_text() == "do not delete"
    (tmp_path / "afile.fmadapter").write_text("x")
    with pytest.raises(FmlabError, match="not a package directory"):
        export(assets, tmp_path, name="afile")


def test_failed_export_leaves_the_previous_package(assets, tmp_path):
    pkg = export(assets, tmp_path)
    before = {p.name: p.read_bytes() for p in pkg.iterdir()}
    bad = tmp_path / "broken-draft.pt"
    torch.save({"embedding.weight": torch.zeros(3)}, bad)
    with pytest.raises(FmlabError, match="does not match"):
        export(assets, tmp_path, draft=bad)
    assert {p.name: p.read_bytes() for p in pkg.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "broken-draft.pt",
        "tiny_adapter.fmadapter",
        "tiny_adapter.fmlab",
    ]
    with pytest.raises(FmlabError, match="not allowed"):
        export(assets, tmp_path, name="tiny-adapter")
    with pytest.raises(FmlabError, match="hex"):
        export(assets, tmp_path, base_signature="not-a-signature")


def test_configured_signature(assets, tmp_path):
    pkg = export(assets, tmp_path, base_signature=BASE_SIGNATURE, num_draft_tokens=3)
    meta = json.loads((pkg / "metadata.json").read_text())
    assert meta["adapterIdentifier"] == "fmadapter-tiny_adapter-9799725"
    assert meta["speculativeDecodingDraftTokenCount"] == 3


# --- Apple's draft template (§8.3), with a synthetic template and spec ---------------------------------


@pytest.fixture
def template_assets(assets, template_dir, tmp_path):
    """A copy of the template assets, for tests that change them."""
    d = shutil.copytree(template_dir, tmp_path / "assets")
    return dict(assets, dir=d, draft=d / "draft-model.pt")


def test_template_fill_and_read_back(template_assets, tmp_path):
    from fmlab.export.draft_template import read_filled
    from fmlab.export.package import load_draft_state

    a = template_assets
    pkg = export(a, tmp_path / "out", draft=a["draft"])
    assert (pkg / "draft.mil").read_bytes() == (a["dir"] / "draft.mil").read_bytes()
    template, filled = a["dir"] / "weights_template.bin", pkg / "draft_weights.bin"
    assert filled.stat().st_size == template.stat().st_size
    assert [(e.metadata_offset, e.dtype, e.size) for e in read_index(filled)] == [
        (e.metadata_offset, e.dtype, e.size) for e in read_index(template)
    ]
    np.testing.assert_array_equal(read_blob(filled, 64), np.linspace(0, 1, 24, dtype=np.float32))  # not in the spec
    manifest = json.loads((tmp_path / "out" / "tiny_adapter.fmlab" / "fmlab-manifest.json").read_text())
    L = a["draft_cfg"].num_layers
    assert manifest["draft"]["template"]["formats"] == {"fp16": 4 * L + 1, "linear_4bits": 1, "lut_4bits": 7 * L}
    assert manifest["draft"]["template"]["mil_sha256_matches"] and manifest["draft"]["coreml"] is None
    source = load_draft_state(a["draft"], a["draft_cfg"])
    back = read_filled(filled, a["dir"] / "checkpoint_spec.yaml", a["draft_cfg"])
    for k, v in source.items():
        tol = 2e-3 if v.ndim == 1 else 0.2
        assert (back[k] - v).norm() / v.norm() < tol, k
    report = verify_fmadapter(pkg, num_prompts=2, max_new_tokens=12)
    assert report.ok, report.text()
    assert "template (int4 embedding + 4-bit LUT)" in report.numbers


def test_fmlab_files_inside_the_package_only_on_request(template_assets, tmp_path):
    a, out = template_assets, tmp_path / "out"
    export(a, out, draft=a["draft"])  # the default: beside
    assert (out / "tiny_adapter.fmlab" / "fmlab-manifest.json").is_file()
    pkg = export(a, out, draft=a["draft"], extras_in_package=True)
    assert sorted(p.name for p in out.iterdir()) == ["tiny_adapter.fmadapter"]  # the stale folder is gone
    assert {"fmlab-manifest.json", "draft.mil", "draft_weights.bin"} <= {p.name for p in pkg.iterdir()}
    report = verify_fmadapter(pkg, num_prompts=1, max_new_tokens=8)
    assert report.ok, report.text()
    entries = next(c for c in report.checks if c.name == "package holds exactly the toolkit's files")
    assert entries.ok is None and "fmlab-manifest.json" in entries.detail
    (out / "tiny_adapter.fmlab").mkdir()
    (out / "tiny_adapter.fmlab" / "mine.txt").write_text("not fmlab's")
    with pytest.raises(FmlabError, match="tiny_adapter.fmlab exists but is not fmlab's folder"):
        export(a, out)
    assert (out / "tiny_adapter.fmlab" / "mine.txt").is_file()
    (pkg / "notes.txt").write_text("x")
    report = verify_fmadapter(pkg, num_prompts=1, max_new_tokens=8)
    assert not report.ok and "not the toolkit's: ['notes.txt']" in report.text()


def test_apple_draft_has_134_template_entries():
    from fmlab.export.draft_template import mil_map

    names = mil_map(preset("afm-draft"))
    assert len(names) == 134
    assert sum(n.endswith(".scale") for n in names) == 49 and sum(n.endswith(".kernel") for n in names) == 84
    assert "decoder.transformer.layer11.self_attention.attention.i_proj.qkv_proj.k_proj.kernel" in names


def test_template_problems_are_clear_errors(template_assets, tmp_path):
    a, out = template_assets, tmp_path / "out"
    spec = yaml.safe_load((a["dir"] / "checkpoint_spec.yaml").read_text())
    name = "decoder.output_norm.scale"
    embedding = spec["weights_mapping"]["decoder.emb.token_emb._embedding"]
    spec["weights_mapping"][name]["blobs"]["values"] = embedding["blobs"]["values"]
    (a["dir"] / "checkpoint_spec.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(
        FmlabError, match="output_norm.scale \\(values\\): blob at .* is int4 of .* the new data is fp16"
    ):
        export(a, out, draft=a["draft"])
    (a["dir"] / "weights_template.bin").unlink()
    with pytest.raises(FmlabError, match="needs all of"):
        export(a, out, draft=a["draft"])
    assert not any(out.iterdir())  # nothing left behind


# --- CLI ------------------------------------------------------------------------------------------------


def test_cli_export_and_verify(assets, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "export",
            "-o",
            str(out),
            "-n",
            "cli_adapter",
            "-c",
            str(assets["adapter"]),
            "--assets",
            str(assets["dir"]),
            "--author",
            "me",
            "--no-coreml",
            "--extras-in-package",
        ]
    )
    assert rc == 0 and "adapter_weights.bin" in capsys.readouterr().out
    assert json.loads((out / "cli_adapter.fmadapter" / "metadata.json").read_text())["author"] == "me"
    assert sorted(p.name for p in out.iterdir()) == ["cli_adapter.fmadapter"]  # the manifest is inside
    assert (out / "cli_adapter.fmadapter" / "fmlab-manifest.json").is_file()
    assert main(["verify-fmadapter", str(out / "cli_adapter.fmadapter")]) == 0
    assert "all checks passed" in capsys.readouterr().out
    assert (
        main(["export", "-o", str(out), "-n", "bad-name", "-c", str(assets["adapter"]), "--assets", str(assets["dir"])])
        == 1
    )
    assert "not allowed" in capsys.readouterr().err
    (out / "cli_adapter.fmadapter" / "metadata.json").write_text("{}")
    assert main(["verify-fmadapter", str(out / "cli_adapter.fmadapter")]) == 1


def test_checkpoint_may_be_a_run_directory(assets, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(assets["adapter"], run / "adapter-epoch2.pt")
    (run / "checkpoints.json").write_text(
        json.dumps({"checkpoints": [{"path": "adapter-epoch2.pt", "eval_loss": 1.0}], "final": None})
    )
    pkg = export_fmadapter(tmp_path / "out", "from_run", run, assets=assets["dir"], log=lambda *_: None)
    manifest = json.loads((pkg.parent / "from_run.fmlab" / "fmlab-manifest.json").read_text())
    assert manifest["sources"]["checkpoint"]["path"] == str((run / "adapter-epoch2.pt").resolve())
