"""MLX export (fmlab.export.mlx): fmlab-tiny with a random non-zero adapter, loaded by mlx-lm itself,
gives fmlab's logits, greedy tokens and chat-template ids; the tokenizer conversion holds for a
150k-piece tokenizer in Apple's layout; mismatched files are errors that name the field or key."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import randomize_lora, tiny_chat_corpus
from safetensors.torch import load_file, save_file
from sentencepiece import SentencePieceProcessor

from fmlab.checkpoints.apple_format import save_adapter
from fmlab.checkpoints.assets import REPO_ASSETS, load_base, load_draft, load_tokenizer
from fmlab.cli import main
from fmlab.data.chat_template import encode_prompt
from fmlab.data.tokenizer import NEWLINE, SPECIAL_PIECES, Tokenizer, train_tokenizer
from fmlab.errors import FmlabError
from fmlab.export.mlx import export_mlx
from fmlab.export.mlx_format import (
    ADAPTERS,
    CONFIG,
    RECORD,
    WEIGHTS,
    afm7_config,
    save_weights,
    with_kv_quant,
    write_mlx_dir,
)
from fmlab.export.mlx_tokenizer import BYTE, CONTROL, NORMAL, USER_DEFINED, read_model_proto, write_hf_tokenizer
from fmlab.export.mlx_verify import mlx_missing
from fmlab.model.config import LoRAConfig, ModelConfig, preset
from fmlab.model.transformer import build_model

PROMPTS = ["Tell me a story about a dragon.", "What is the capital of France?"]
CHATS = [
    [{"role": "user", "content": "Hello there!\nHow are you? 123"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hey.\n\nWhat?"},
        {"role": "user", "content": "é ü 😀 中文 3.14"},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "weather", "arguments": {"c": 1}}}]},
        {"role": "tool", "content": {"temp": 21}},
    ],
    [{"role": "user", "content": "json", "response_format": {"type": "json_schema", "json_schema": {"name": "R"}}}],
]
TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]

mlx_lm = pytest.importorskip("mlx_lm", reason="needs the fmlab[mlx] extra")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """fmlab-tiny + a random adapter + the shipped draft, exported through the CLI (fused, float32)."""
    d = tmp_path_factory.mktemp("mlx")
    model = randomize_lora(load_base(), 0.02, seed=0)
    adapter = save_adapter(model, d / "adapter.pt")
    argv = ["export", "-o", str(d), "-n", "tiny", "-c", str(adapter), "-d", str(REPO_ASSETS / "draft-model.pt")]
    assert main([*argv, "--format", "mlx", "--no-mlx-verify", "-q"]) == 0
    return d, model


def test_fused_export_matches_fmlab_in_mlx_lm(exported):
    from fmlab.export.mlx_verify import FLIP_KL_TOLERANCE, LOGIT_TOLERANCE, verify_mlx_dir

    d, model = exported
    record = json.loads((d / "tiny_mlx" / RECORD).read_text())
    assert record["lora"] == "fused" and record["dtype"] == "float32"
    report = verify_mlx_dir(d / "tiny_mlx", model, load_tokenizer(), PROMPTS)
    assert report.ok, report.text()
    n = report.numbers
    # int8 K/V: a value within fp32 noise of a rounding boundary may take the neighbouring bin, and the
    # layers after it then differ a little too (a cascade): the distributions must still agree
    if n["kv_int8_flips"] == 0:
        assert n["max_abs_dlogit"] < LOGIT_TOLERANCE
    else:
        assert n["mean_kl"] < FLIP_KL_TOLERANCE
    assert n["argmax_agreement"] == 1.0 and n["greedy_identical"] == 1.0
    assert n["kv_int8_flips"] <= 1e-2 * n["kv_values"]


def test_draft_is_calibrated_int8_and_matches(exported):
    from fmlab.export.mlx_verify import verify_mlx_dir

    d, _ = exported
    tokenizer = load_tokenizer()
    draft = load_draft()
    assert not draft.config.kv_quant  # afm7 cannot switch its K/V quantiser off
    quantised = with_kv_quant(draft, tokenizer)
    assert quantised is not draft and all(b.attn.kv_quant_active() for b in quantised.layers)
    assert "approximate" in json.loads((d / "tiny_mlx_draft" / RECORD).read_text())["kv_quant"]
    report = verify_mlx_dir(d / "tiny_mlx_draft", quantised, tokenizer, PROMPTS[:1])
    assert report.ok, report.text()


def test_mlx_lm_generate_stops_at_turn_end(exported):
    from mlx_lm.generate import stream_generate
    from mlx_lm.sample_utils import make_sampler

    from fmlab.export.mlx_verify import load_mlx

    model, hf = load_mlx(exported[0] / "tiny_mlx")
    tokenizer = load_tokenizer()
    assert tokenizer.turn_end_id in hf.eos_token_ids
    ids = hf.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True)
    responses = list(stream_generate(model, hf, ids, max_tokens=200, sampler=make_sampler(0.0)))
    last = responses[-1]
    assert last.finish_reason == "stop" and last.token == tokenizer.turn_end_id


def test_unfused_bf16_adapter(tmp_path, exported):
    from fmlab.export.mlx_verify import verify_mlx_dir

    _, model = exported
    adapter = save_adapter(model, tmp_path / "adapter.pt")
    path = export_mlx(tmp_path, "tiny", adapter, dtype="bfloat16", unfused=True, verify=False, log=lambda *_: None)
    path = path["model"]
    weights = load_file(str(path / WEIGHTS))
    assert all(v.dtype == torch.bfloat16 for v in weights.values() if v.dim() > 0)
    report = verify_mlx_dir(path, model, load_tokenizer(), PROMPTS[:1])
    assert report.ok, report.text()  # against fmlab with the base rounded to bf16, LoRA unfused
    # mlx-lm 0.32's own adapter loader refuses afm7's fused-QKV names; fmlab's load_mlx handles them
    with pytest.raises(ValueError, match=r"lora_a\.0"):
        mlx_lm.load(str(path), adapter_path=str(path / ADAPTERS))


def test_unfused_subset_of_targets_on_an_uncalibrated_base(tmp_path):
    from fmlab.export.mlx_verify import verify_mlx_dir

    lora = LoRAConfig(rank=4, alpha=8, targets=("q", "v", "gate", "down"))
    model = randomize_lora(build_model(preset("tiny", vocab_size=8192, lora=lora), seed=0), 0.05, seed=1).eval()
    tokenizer = load_tokenizer()
    quantised = with_kv_quant(model, tokenizer)  # all-zero ranges: calibrated here
    assert quantised is not model
    write_mlx_dir(tmp_path / "m", quantised, tokenizer, tokenizer.source, unfused=True)
    keys = json.loads((tmp_path / "m" / ADAPTERS / "adapter_config.json").read_text())["lora_parameters"]["keys"]
    assert keys == ["mlp.down_proj", "mlp.gate_proj", "self_attn.q_proj", "self_attn.qkv_proj"]
    report = verify_mlx_dir(tmp_path / "m", quantised, tokenizer, PROMPTS[:1], max_new_tokens=8)
    assert report.ok, report.text()


def test_mismatched_files_name_the_field_or_key(tmp_path, exported):
    from fmlab.export.mlx_verify import check_mlx_dir

    path = shutil.copytree(exported[0] / "tiny_mlx", tmp_path / "broken")
    config = json.loads((path / CONFIG).read_text())
    (path / CONFIG).write_text(json.dumps({k: v for k, v in config.items() if k != "rope_theta"}))
    with pytest.raises(FmlabError, match="lacks rope_theta"):
        check_mlx_dir(path)
    (path / CONFIG).write_text(json.dumps({**config, "hidden_dim_scale_factor": 3.0}))
    with pytest.raises(FmlabError, match=r"mlp.gate_proj.weight: shape"):
        check_mlx_dir(path)
    (path / CONFIG).write_text(json.dumps(config))
    weights = load_file(str(path / WEIGHTS))
    weights["model.lm_head.weight"] = weights.pop("model.output_norm.weight")
    save_file(weights, str(path / WEIGHTS))
    with pytest.raises(FmlabError, match=r"missing model\.output_norm\.weight.*unexpected model\.lm_head\.weight"):
        check_mlx_dir(path)


def test_sharded_weights_load(tmp_path, exported):
    import mlx.core as mx

    from fmlab.export.mlx_verify import check_mlx_dir, load_mlx

    path = shutil.copytree(exported[0] / "tiny_mlx", tmp_path / "sharded")
    weights = load_file(str(path / WEIGHTS))
    (path / WEIGHTS).unlink()
    names = save_weights(weights, path, shard_bytes=4 << 20)
    assert len(names) > 1 and (path / "model.safetensors.index.json").is_file()
    check_mlx_dir(path)
    ids = mx.array([[1, 5, 10, 20]])
    sharded, _ = load_mlx(path)
    whole, _ = load_mlx(exported[0] / "tiny_mlx")
    assert mx.array_equal(sharded(ids), whole(ids))


def test_what_afm7_cannot_express_is_refused():
    tokenizer = load_tokenizer()
    cfg = ModelConfig(vocab_size=8192, hidden_dim=64, num_layers=2, num_kv_reuse_layers=0, num_heads=4)
    assert afm7_config(cfg, tokenizer, "float32")["rope_theta"] == 500000.0  # mlx-lm's default is 50000
    cfg.hidden_dim_scale_factor = 2.01  # tamm rounds 128.64 to 129, afm7 truncates to 128
    with pytest.raises(FmlabError, match="int"):
        afm7_config(cfg, tokenizer, "float32")


def test_missing_extra_is_named():
    assert mlx_missing() is None
    assert "fmlab[mlx]" in mlx_missing(("mlx", "no_such_module_for_fmlab"))


# --- the tokenizer --------------------------------------------------------------------------------


def apple_layout_tokenizer(tmp_path, size: int = 150021):
    """A tokenizer laid out like Apple's (docs/afm-format.md §4): control pieces, `<n>` at 4, the byte
    pieces at 5–260, BPE pieces, then the chat pieces from 150000. The BPE part is trained here
    (split digits, byte fallback); pieces made of two trained pieces fill it to 150000 with lower
    scores, so the conversion's merges are exercised at Apple's size."""
    small = train_tokenizer(tiny_chat_corpus(300), tmp_path / "small.model", vocab_size=700)
    proto = read_model_proto(small.source)
    pieces = list(proto.pieces)
    by_type = lambda t: [p for p in pieces if p.type == t]
    control, normal = by_type(CONTROL), by_type(NORMAL)
    unk = [p for p in pieces if p.piece == "<unk>"]
    newline = [p for p in by_type(USER_DEFINED) if p.piece == NEWLINE]
    chat = [p for p in by_type(USER_DEFINED) if p.piece in SPECIAL_PIECES]
    head = [control[0], control[1], unk[0], control[2], newline[0], *by_type(BYTE), *normal]
    known, score = {p.piece for p in pieces}, min(p.score for p in normal)
    words = [p.piece for p in normal if not any(c.isdigit() for c in p.piece)]
    fill_needed = 150000 - len(head)
    extra, lefts = [], list(words)  # pieces of two pieces, then of three, ...
    for left in lefts:
        for right in words:
            piece = left + right
            if not right.startswith("\u2581") and len(piece) <= 16 and piece not in known:
                known.add(piece)
                score -= 1.0
                extra.append((piece, score))
                lefts.append(piece)
        if len(extra) >= fill_needed:
            break
    extra = extra[:fill_needed]
    assert len(extra) == fill_needed
    apple = type(proto)()
    apple.CopyFrom(proto)
    del apple.pieces[:]
    apple.pieces.extend(head)
    for piece, s in extra:
        apple.pieces.add(piece=piece, score=s, type=NORMAL)
    apple.pieces.extend(chat)
    apple.trainer_spec.unk_id, apple.trainer_spec.eos_id, apple.trainer_spec.pad_id = 2, 1, 0
    path = tmp_path / "apple-layout.model"
    path.write_bytes(apple.SerializeToString())
    assert len(apple.pieces) == size
    return Tokenizer(SentencePieceProcessor(model_file=str(path)), str(path))


@pytest.mark.parametrize("which", ["fmlab-tiny", "apple-layout-150k"])
def test_hf_tokenizer_gives_fmlab_ids(tmp_path, which):
    transformers = pytest.importorskip("transformers")
    tokenizer = load_tokenizer() if which == "fmlab-tiny" else apple_layout_tokenizer(tmp_path)
    if which != "fmlab-tiny":
        assert (tokenizer.turn_start_id, tokenizer.turn_end_id, tokenizer.newline_id) == (150000, 150001, 4)
    write_hf_tokenizer(tokenizer.source, tmp_path / "hf", 4096)
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = tiny_chat_corpus(200) + [
        "Hello\nworld",
        "\nleading newline",
        " leading space",
        "digits 0123456789 and 3.14",
        "é ü 😀 中文 ŋ",
        "tabs\tand  double  spaces \n\n",
        "<turn_start> user<n>hi<turn_end>",
    ]
    mismatched = [t for t in texts if hf.encode(t, add_special_tokens=False) != tokenizer.encode(t)]
    assert not mismatched
    for t in texts[-7:-1]:  # decoding with special pieces kept differs: transformers drops them here
        assert hf.decode(tokenizer.encode(t), skip_special_tokens=True) == tokenizer.decode(tokenizer.encode(t))
    for messages in CHATS:
        for tools in (None, TOOLS):
            ours = encode_prompt(tokenizer, messages, tools)
            theirs = hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, return_dict=False)
            assert list(theirs) == ours
