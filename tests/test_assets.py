"""The shipped embedded default (assets/): files match the manifest, which names every source with its
licence, configs build the AFM architecture, the base chats coherently but does not know plays, the
draft is much cheaper."""

import json

import pytest
import torch

from fmlab.checkpoints.assets import REPO_ASSETS, load_base, load_draft, load_tokenizer, recommended
from fmlab.files import file_sha
from fmlab.infer.generate import generate
from fmlab.infer.sampling import Sampling
from fmlab.model.config import from_tamm_json
from fmlab.model.transformer import count_parameters
from fmlab.tiny.build import RECOMMENDED
from fmlab.tiny.corpus import probe_prompts
from fmlab.tiny.mix import SOURCES, WORDNET_LICENCE, WORDNET_NOTICE

MANIFEST = json.loads((REPO_ASSETS / "manifest.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST["files"]))
def test_files_match_manifest(name):
    path = REPO_ASSETS / name
    assert path.stat().st_size == MANIFEST["files"][name]["bytes"]
    assert file_sha(path) == MANIFEST["files"][name]["sha256"]


def test_total_size_is_small():
    assert sum(f["bytes"] for f in MANIFEST["files"].values()) < 60 * 2**20


def test_configs_are_tamm_json_with_afm_features():
    base = from_tamm_json(REPO_ASSETS / "base-model-config.json")
    draft = from_tamm_json(REPO_ASSETS / "draft-model-config.json")
    assert base.num_kv_reuse_layers > 0 and base.num_kv_heads < base.num_heads and base.kv_quant
    assert base.lora is not None and draft.lora is None and draft.num_kv_reuse_layers == 0
    assert base.vocab_size == draft.vocab_size
    raw = torch.load(REPO_ASSETS / "base-model.pt", weights_only=True, mmap=True)
    assert any(".adapters.base_adapter." in k for k in raw)
    assert any("kv_quantizer" in k for k in raw)


def test_draft_is_several_times_cheaper():
    base, draft = (from_tamm_json(REPO_ASSETS / f) for f in ("base-model-config.json", "draft-model-config.json"))
    from fmlab.model.transformer import build_model

    def per_token(cfg):  # matmul parameters touched per token, the embedding lookup excluded
        counts = count_parameters(build_model(cfg, device="meta"))
        return counts["segment_0"] + counts["segment_1"] + counts["embedding"]  # tied head

    assert per_token(base) > 3 * per_token(draft)
    assert base.num_layers >= 3 * draft.num_layers


@pytest.fixture(scope="module")
def base_and_tokenizer():
    return load_base(), load_tokenizer()


def test_base_answers_probe_prompts_on_topic(base_and_tokenizer):
    base, tokenizer = base_and_tokenizer
    probes = probe_prompts()
    replies = generate(base, tokenizer, [m for m, _ in probes], 48, Sampling(temperature=0), batch_size=8)
    hits = [all(w.lower() in r.text.lower() for w in words) for (_, words), r in zip(probes, replies)]
    assert sum(hits) >= len(hits) - 1, [r.text for r in replies]


def test_base_does_not_know_the_play_format():
    assert MANIFEST["base_play_format_score"] < 0.35


def test_draft_loads_and_runs():
    draft = load_draft()
    logits = draft(torch.tensor([[1, 5, 6]]))
    assert logits.shape[-1] == draft.config.vocab_size and torch.isfinite(logits).all()


def test_manifest_names_every_source_with_its_licence_and_share():
    sources = {s["name"]: s for s in MANIFEST["sources"]}
    assert set(sources) == set(SOURCES)  # WordNet's real English and fmlab's synthetic text
    assert sum(s["share"] for s in sources.values()) == pytest.approx(1.0, abs=1e-3)
    for name, s in sources.items():
        assert s["licence"] == SOURCES[name].licence and s["tokens"] > 0
        if s["licence"] == WORDNET_LICENCE:  # the licence's one condition: its notice goes with every copy
            assert s["notice"] == WORDNET_NOTICE and s["package"].startswith("wordnet-base")
    assert sources["wordnet-text"]["share"] + sources["wordnet-chats"]["share"] > 0.3


def test_the_shipped_recommendation_is_valid_and_is_the_builds_own():
    for command in ("train_adapter", "train_draft"):
        assert recommended(REPO_ASSETS, command) == RECOMMENDED[command]
