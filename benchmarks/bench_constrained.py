"""The cost of constrained decoding (`fmlab.infer.constrained`, llguidance):

- per token at batch 1 on the embedded fmlab-tiny: greedy decoding under the play-outline JSON schema
  against unconstrained decoding of the same number of tokens (no early stop), eager (and compiled);
- the mask alone (grammar state → allowed set → masked logits) per token on fmlab-tiny's 4,000 pieces and
  on a 150,021-piece SentencePiece vocabulary in Apple's layout (`apple_layout_model`);
- speculative decoding under the schema: identical to constrained greedy, and its speedup;
- with `--engines`, the grammar engines side by side on both vocabularies (whichever are installed of
  llguidance, xgrammar, outlines-core): vocabulary set-up, schema compile and mask time per token.

Warm-up first, interleaved repeats, medians; the ratios are what compare across machines.

    python -m benchmarks.bench_constrained [--tokens 128 --repeats 5 --compile --engines]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from fmlab.data.tokenizer import NEWLINE, SPACE, SPECIAL_PIECES, Tokenizer
from fmlab.infer import constrained
from fmlab.infer.generate import encode_prompts, generate_ids, stop_ids
from fmlab.infer.sampling import Sampling
from fmlab.infer.speculative import speculative_generate

try:
    from benchmarks.timing import interleaved, machine
except ImportError:
    from timing import interleaved, machine

GREEDY = Sampling(temperature=0.0)
# The example task's schema (fmlab.data.schema writes it this way), inlined so the benchmark stands alone.
PLAY_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "characters": {"type": "array", "items": {"type": "string"}, "maxItems": 3, "minItems": 2},
        "setting": {"type": "string"},
        "scenes": {"type": "integer", "maximum": 3, "minimum": 1},
    },
    "required": ["title", "characters", "setting", "scenes"],
    "additionalProperties": False,
}
PLAY_REPLY = (
    '{"title": "The Fox and the Owl", "characters": ["fox", "owl", "king"], "setting": "a snowy hill", "scenes": 2}'
)
PROMPTS = ["Write a two-scene play about a fox, an owl and a king on a snowy hill.", "A play about a frog."]


def apple_layout_model(vocab_size: int = 150_000, seed: int = 0) -> bytes:
    """A SentencePiece BPE model proto laid out like Apple's tokenizer.model (docs/afm-format.md §4):
    <pad> 0, </s> 1, <unk> 2, <mask> 3 (control), <n> 4, the 256 byte pieces 5-260, learned pieces up to
    `vocab_size`, then the 21 special pieces (<turn_start> = 150000 ...). The learned pieces are
    synthetic: every ASCII, Latin-1, Cyrillic and 12,000 CJK characters, JSON punctuation pieces, and
    random words (English letter frequencies, lengths up to 16, most with a leading ▁). Training a real
    150k model needs a corpus far larger than a test can afford; the layout, piece kinds and lengths are
    what the vocabulary mapping and the mask cost depend on."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    rng = random.Random(seed)
    model = pb.ModelProto()
    spec = model.trainer_spec
    spec.model_type, spec.vocab_size, spec.byte_fallback, spec.split_digits = pb.TrainerSpec.BPE, vocab_size, True, True
    spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id, spec.max_sentencepiece_length = 2, -1, 1, 0, 16
    norm = model.normalizer_spec
    norm.name, norm.add_dummy_prefix, norm.remove_extra_whitespaces = "identity", True, False
    kind = pb.ModelProto.SentencePiece

    def add(piece, type_, score=0.0):
        p = model.pieces.add()
        p.piece, p.type, p.score = piece, type_, score

    for piece, type_ in [("<pad>", kind.CONTROL), ("</s>", kind.CONTROL), ("<unk>", kind.UNKNOWN)]:
        add(piece, type_)
    add("<mask>", kind.CONTROL)
    add(NEWLINE, kind.USER_DEFINED)
    for b in range(256):
        add(f"<0x{b:02X}>", kind.BYTE)
    ranges = [(33, 127), (0xA1, 0x180), (0x400, 0x460), (0x3041, 0x3097), (0x4E00, 0x4E00 + 12000)]
    chars = [chr(c) for lo, hi in ranges for c in range(lo, hi)]
    learned = [SPACE, *chars, '{"', '":', '",', '"}', '":"', '","', '▁"', '"]', '["', "▁{", "},", "}]", "▁[", "▁("]
    seen = set(learned)
    letters, freq = "etaoinshrdlcumwfgypbvkjxqz", [13, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1, 1]
    freq += [0.2] * 4
    while len(learned) < vocab_size - 261:
        r = rng.random()
        if r < 0.97:
            word = "".join(rng.choices(letters, freq, k=min(15, 2 + int(rng.expovariate(1 / 5)))))
            word = SPACE + word if r < 0.55 else SPACE + word.capitalize() if r < 0.65 else word
        else:
            word = "".join(rng.choices(chars[-12000:], k=rng.randint(2, 4)))
        if word not in seen:
            seen.add(word)
            learned.append(word)
    for i, piece in enumerate(learned):
        add(piece, kind.NORMAL, -float(i))
    for piece in SPECIAL_PIECES:
        add(piece, kind.USER_DEFINED)
    return model.SerializeToString()


def apple_layout_tokenizer(vocab_size: int = 150_000) -> Tokenizer:
    import sentencepiece as spm

    return Tokenizer(spm.SentencePieceProcessor(model_proto=apple_layout_model(vocab_size)), "<apple-layout>")


def reply_ids(tokenizer, text: str) -> list[int]:
    """The pieces of `text` as a reply's tokens (after `<n>`: no dummy-prefix ▁)."""
    ids = tokenizer.encode(NEWLINE + text)
    return ids[ids.index(tokenizer.newline_id) + 1 :]


def mask_cost(tokenizer, model_vocab: int, repeats: int = 5) -> dict:
    """Median µs per token of the mask (allowed set + masked logits) along a schema-valid reply."""
    grammar = constrained.json_schema(tokenizer, PLAY_SCHEMA)
    path = reply_ids(tokenizer, PLAY_REPLY)
    logits, mask = torch.randn(1, model_vocab), constrained.TokenMask(grammar, 1, model_vocab)
    per_token = []
    for _ in range(repeats):
        m = grammar.matcher()
        for t in path:
            start = time.perf_counter()
            mask.fill(0, m)
            mask.apply(logits)
            per_token.append(time.perf_counter() - start)
            m.advance(t)
    return {"pieces": len(tokenizer), "mask_us_median": 1e6 * statistics.median(per_token), "reply_tokens": len(path)}


def decode_overhead(model, tokenizer, tokens: int, repeats: int, compiled: bool) -> dict:
    """Constrained vs unconstrained greedy decoding of the same token count, batch 1."""
    grammar = constrained.json_schema(tokenizer, PLAY_SCHEMA)
    prompt = encode_prompts(tokenizer, PROMPTS[:1])
    stop = stop_ids(tokenizer)
    run = lambda **kw: generate_ids(model, prompt, stop, tokens, GREEDY, compile_model=compiled, **kw)[0][0]
    n = len(run(constraint=grammar))  # the base may close the JSON early; time that many tokens both ways
    times = interleaved(
        {
            "unconstrained": lambda: generate_ids(model, prompt, set(), n, GREEDY, compile_model=compiled),
            "constrained": lambda: generate_ids(
                model, prompt, stop, n, GREEDY, compile_model=compiled, constraint=grammar
            ),
        },
        repeats,
    )
    per = {k: 1e3 * v / n for k, v in times.items()}
    return {
        "mode": "compiled" if compiled else "eager",
        "tokens": n,
        "ms_per_token": per,
        "overhead": per["constrained"] / per["unconstrained"] - 1,
    }


def speculative_under_schema(model, draft, tokenizer, tokens: int, repeats: int, k: int = 5) -> dict:
    grammar = constrained.json_schema(tokenizer, PLAY_SCHEMA)
    prompts = encode_prompts(tokenizer, PROMPTS)
    stop = stop_ids(tokenizer)
    plain = lambda: [generate_ids(model, [p], stop, tokens, GREEDY, constraint=grammar)[0][0] for p in prompts]
    spec = lambda: [
        speculative_generate(model, draft, p, stop, tokens, k, GREEDY, constraint=grammar)[0] for p in prompts
    ]
    identical = plain() == spec()
    times = interleaved({"plain": plain, "speculative": spec}, repeats)
    return {"k": k, "identical": identical, "speedup": times["plain"] / times["speculative"]}


def engines(tokenizer, name: str) -> list[dict]:
    """The grammar engines on one vocabulary: set-up, compile and mask µs per token on the reply path."""
    token_bytes, special = constrained.piece_bytes(tokenizer)
    stops, path, rows = [tokenizer.turn_end_id, tokenizer.eos_id], reply_ids(tokenizer, PLAY_REPLY), []
    words = torch.zeros(1, (len(token_bytes) + 31) // 32, dtype=torch.int32)

    def walk(fill, advance):
        per_token = []
        for t in path:
            start = time.perf_counter()
            fill()
            per_token.append(time.perf_counter() - start)
            advance(t)
        return 1e6 * statistics.median(per_token)

    def timed(fn):
        start = time.perf_counter()
        return fn(), time.perf_counter() - start

    try:
        import llguidance  # noqa: F401

        constrained._ENGINE_TOKENIZERS.pop(tokenizer, None)
        _, setup = timed(lambda: constrained.engine_tokenizer(tokenizer))
        grammar, compile_s = timed(lambda: constrained.json_schema(tokenizer, PLAY_SCHEMA))
        m = grammar.matcher()
        us = walk(lambda: m._m.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4), m.advance)
        rows.append({"engine": "llguidance", "setup_s": setup, "compile_s": compile_s, "mask_us": us})
    except ImportError:
        pass
    try:
        import xgrammar as xgr

        vocab = [b"" if i in set(special) else b for i, b in enumerate(token_bytes)]
        compiler, setup = timed(
            lambda: xgr.GrammarCompiler(xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, stop_token_ids=stops))
        )
        compiled, compile_s = timed(
            lambda: compiler.compile_json_schema(json.dumps(PLAY_SCHEMA), any_whitespace=False, separators=(", ", ": "))
        )
        m = xgr.GrammarMatcher(compiled)
        us = walk(lambda: m.fill_next_token_bitmask(words), m.accept_token)
        rows.append({"engine": "xgrammar", "setup_s": setup, "compile_s": compile_s, "mask_us": us})
    except ImportError:
        pass
    try:
        import outlines_core as oc
        from outlines_core.json_schema import build_regex_from_schema

        vocab = {}
        for i, b in enumerate(token_bytes):
            if i not in set(special):
                vocab.setdefault(b, []).append(i)
        v, setup = timed(lambda: oc.Vocabulary(stops[0], vocab))
        index, compile_s = timed(lambda: oc.Index(build_regex_from_schema(json.dumps(PLAY_SCHEMA), None), v))
        guide = oc.Guide(index)
        us = walk(
            lambda: guide.write_mask_into(words.data_ptr(), words.numel(), 4),
            lambda t: guide.advance(t, return_tokens=False),
        )
        rows.append({"engine": "outlines-core", "setup_s": setup, "compile_s": compile_s, "mask_us": us})
    except ImportError:
        pass
    return [{"vocabulary": name, **r} for r in rows]


def run(tokens=128, repeats=5, compiled=False, with_engines=False) -> dict:
    from fmlab.checkpoints.assets import load_base, load_draft, load_tokenizer

    tokenizer, model, draft = load_tokenizer(None), load_base(None).eval(), load_draft(None).eval()
    big = apple_layout_tokenizer()
    results = {
        "machine": machine(),
        "decode": [
            decode_overhead(model, tokenizer, tokens, repeats, c) for c in ([False, True] if compiled else [False])
        ],
        "mask": [mask_cost(tokenizer, model.config.vocab_size, repeats), mask_cost(big, 153_600, repeats)],
        "speculative": speculative_under_schema(model, draft, tokenizer, tokens, max(1, repeats // 2)),
    }
    if with_engines:
        results["engines"] = engines(tokenizer, "fmlab-tiny") + engines(big, "apple-layout-150k")
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time the compiled decode step")
    ap.add_argument("--engines", action="store_true", help="compare the installed grammar engines")
    a = ap.parse_args()
    print(json.dumps(run(a.tokens, a.repeats, a.compile, a.engines), indent=2))
