"""`fmlab build-assets` end to end on a miniature recipe: the assets' files and manifest (sources with
licences and token shares, the recommended recipe), the resumable stages, and the CLI reading the
manifest's recommendation when no flag is given."""

import argparse
import json
import shutil

import pytest

from fmlab.checkpoints.assets import ASSET_FILES, load_base, load_tokenizer, recommended
from fmlab.cli import training
from fmlab.errors import FmlabError
from fmlab.model.config import LoRAConfig, ModelConfig
from fmlab.tiny import build
from fmlab.tiny.corpus import tokenizer_texts
from fmlab.tiny.mix import SOURCES, WORDNET_LICENCE, documents, mix_tokenizer_texts, reading_documents
from fmlab.tiny.real_text import held_out_keys
from fmlab.tiny.wordnet import DEFAULT_DIR, read_synsets

MINI = dict(
    vocab_size=1024,
    hidden_dim=32,
    num_layers=2,
    num_kv_reuse_layers=1,
    num_heads=2,
    num_kv_heads=1,
    hidden_dim_scale_factor=2.0,
)


def mini_recipe(**changes):
    settings = dict(
        vocab_pieces=700,
        chat_samples=120,
        plain_texts=20,
        json_chats=20,
        wordnet_text=0.0,  # hermetic: the WordNet sources have their own test below
        wordnet_chats=0.0,
        max_len=128,
        held_out_per_source=4,
        score_prompts=4,
        base=ModelConfig(**MINI, lora=LoRAConfig(rank=4, alpha=8)),
        draft=ModelConfig(**{**MINI, "num_kv_reuse_layers": 0, "num_layers": 1}, kv_quant=False, lora=None),
    )
    return build.Recipe(**(settings | changes))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    manifest = build.build_assets(root / "assets", mini_recipe(), work=root / "work")
    return root, manifest


def test_build_writes_the_assets_and_a_manifest_of_sources(built):
    root, manifest = built
    assets = root / "assets"
    for name in ASSET_FILES:
        assert manifest["files"][name]["bytes"] == (assets / name).stat().st_size > 0
    assert load_tokenizer(assets).vocab_size <= 1024
    assert load_base(assets).config.hidden_dim == 32
    sources = {s["name"]: s for s in manifest["sources"]}
    assert set(sources) == {"synthetic-chats", "synthetic-text", "json-drills"}
    assert all(s["tokens"] > 0 and s["licence"] for s in sources.values())
    assert sum(s["share"] for s in sources.values()) == pytest.approx(1.0, abs=1e-3)
    assert set(manifest["base_eval_loss"]) == set(sources)  # a held-out loss per source
    assert "precision" in manifest and "cpu" in manifest
    assert recommended(assets) == build.RECOMMENDED["train_adapter"]


def test_a_finished_build_resumes_without_retraining(built):
    root, manifest = built
    stages = json.loads((root / "work" / "stages.json").read_text())
    again = build.build_assets(root / "assets", mini_recipe(), work=root / "work")
    assert again["files"] == manifest["files"]  # nothing retrained: same bytes
    assert json.loads((root / "work" / "stages.json").read_text())["base"] == stages["base"]


def test_a_work_folder_of_another_recipe_is_refused(built):
    root, _ = built
    with pytest.raises(FmlabError, match="another recipe"):
        build.build_assets(root / "other", mini_recipe(seed=1), work=root / "work")


def test_recommended_settings_are_checked(built, tmp_path):
    root, _ = built
    assets = tmp_path / "assets"
    shutil.copytree(root / "assets", assets)
    manifest = json.loads((assets / "manifest.json").read_text())
    manifest["recommended"]["train_adapter"]["learning_rate"] = 5.0
    (assets / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmlabError, match=r"manifest.json: recommended.train_adapter.learning_rate = 5.0"):
        recommended(assets)
    manifest["recommended"]["train_adapter"] = {"lr": 1e-3}
    (assets / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FmlabError, match="recommended.train_adapter.lr is not a setting"):
        recommended(assets)
    (assets / "manifest.json").unlink()  # Apple's assets have no manifest: Apple's defaults stay
    assert recommended(assets) == {}


def _args(assets, **flags):
    values = dict.fromkeys(training.RECOMMENDABLE) | {"pack_sequences": False, "fixed_sized_sequences": False}
    return argparse.Namespace(**(values | {"assets": str(assets)} | flags))


def test_the_cli_takes_the_assets_recommendation_unless_a_flag_is_given(built, capsys):
    assets = built[0] / "assets"
    args = _args(assets, epochs=7)
    training._fill_defaults(args, "train_adapter")
    rec = build.RECOMMENDED["train_adapter"]
    assert args.epochs == 7 and args.settings_from["epochs"] == "given"
    assert args.learning_rate == rec["learning_rate"] and args.settings_from["learning_rate"] == "assets"
    assert args.max_sequence_length is None and args.settings_from["max_sequence_length"] == "default"
    assert "using the assets' recommended learning-rate" in capsys.readouterr().out
    packed = _args(assets, pack_sequences=True)
    training._fill_defaults(packed, "train_adapter")
    assert packed.max_sequence_length == 4096 and packed.settings_from["max_sequence_length"] == "base context length"


def test_without_a_manifest_the_cli_keeps_apples_defaults(built, tmp_path):
    assets = tmp_path / "apple"
    shutil.copytree(built[0] / "assets", assets)
    (assets / "manifest.json").unlink()
    args = _args(assets)
    training._fill_defaults(args, "train_adapter")
    assert (args.learning_rate, args.epochs, args.batch_size) == (1e-3, 2, 4)
    assert set(args.settings_from.values()) == {"default"}


@pytest.mark.skipif(
    not (DEFAULT_DIR / "data.noun").is_file(), reason="needs WordNet 3.0 (apt-get install wordnet-base)"
)
def test_the_wordnet_sources_leave_out_the_tasks_held_out_synsets():
    recipe = mini_recipe(wordnet_text=1.0, wordnet_chats=1.0, tokenizer_wordnet_docs=50)
    docs = documents(recipe)
    assert SOURCES["wordnet-text"].licence == SOURCES["wordnet-chats"].licence == WORDNET_LICENCE
    read = " ".join(docs["wordnet-text"]) + " ".join(m[-1]["content"] for m in docs["wordnet-chats"])
    synsets = {(s.pos, s.offset): s for s in read_synsets()}
    held_out = [synsets[k].definition for k in held_out_keys()]
    assert len(held_out) == 450
    seen = [d for d in held_out if len(d.split()) >= 5 and d in read]
    assert len(seen) <= 5, seen  # only definitions another synset shares word for word
    texts = list(mix_tokenizer_texts(recipe, docs))
    assert any('{"' in t for t in texts)  # the JSON drills reach the tokenizer
    assert len(texts) == len(list(tokenizer_texts(recipe.seed))) + recipe.json_chats + 2 * 50  # 50 per WordNet source


@pytest.mark.skipif(
    not (DEFAULT_DIR / "data.noun").is_file(), reason="needs WordNet 3.0 (apt-get install wordnet-base)"
)
def test_a_build_with_a_reading_pass_continues_the_base_and_records_it(tmp_path):
    recipe = mini_recipe(
        wordnet_text=0.002, wordnet_chats=0.0005, tokenizer_wordnet_docs=20, reading_epochs=1, reading_text=0.004
    )
    manifest = build.build_assets(tmp_path / "assets", recipe, work=tmp_path / "work")
    stages = json.loads((tmp_path / "work" / "stages.json").read_text())
    assert {"base", "reading", "draft"} <= set(stages) and manifest["seconds"]["reading_s"] > 0
    seconds = manifest["seconds"]
    assert seconds["total_s"] == pytest.approx(sum(v for k, v in seconds.items() if k not in ("total_s", "last_run_s")))
    assert manifest["base_eval_loss"] == stages["reading"]["eval_loss"] != manifest["base_eval_loss_before_reading"]
    assert set(manifest["stage_machines"]) == {"base", "reading", "draft"}
    sources = {s["name"]: s for s in manifest["sources"]}
    assert all(s["reading_tokens"] > 0 for s in sources.values())
    assert sum(s["share"] for s in sources.values()) == pytest.approx(1.0, abs=1e-3)
    reloaded = build.build_assets(tmp_path / "assets", recipe, work=tmp_path / "work")  # all stages done
    assert reloaded["files"] == manifest["files"]


@pytest.mark.skipif(
    not (DEFAULT_DIR / "data.noun").is_file(), reason="needs WordNet 3.0 (apt-get install wordnet-base)"
)
def test_the_reading_pass_reads_all_of_wordnet_again_and_other_definition_chats():
    recipe = mini_recipe(wordnet_text=0.6, wordnet_chats=0.1, reading_chats=30)
    first = documents(recipe)
    reading = reading_documents(recipe, first)
    assert list(reading) == ["wordnet-text", "wordnet-chats", "synthetic-chats", "synthetic-text", "json-drills"]
    assert reading["json-drills"] == first["json-drills"] and reading["synthetic-text"] == first["synthetic-text"]
    assert len(reading["wordnet-text"]) > len(first["wordnet-text"]) / 0.6 * 0.9  # all of it, not 60%
    same = set(reading["wordnet-text"]) & set(first["wordnet-text"])
    assert len(same) < 0.05 * len(first["wordnet-text"])  # grouped anew (a one-entry paragraph can recur)
    asked = {json.dumps(c) for c in first["wordnet-chats"]}
    assert len(reading["wordnet-chats"]) == len(first["wordnet-chats"])
    assert asked.isdisjoint(json.dumps(c) for c in reading["wordnet-chats"])
    assert reading["synthetic-chats"] == first["synthetic-chats"][:30]
    read = " ".join(reading["wordnet-text"])
    synsets = {(s.pos, s.offset): s for s in read_synsets()}
    seen = [d for d in (synsets[k].definition for k in held_out_keys()) if len(d.split()) >= 5 and d in read]
    assert len(seen) <= 5, seen  # the task's valid and test synsets stay unread
