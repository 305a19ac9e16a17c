"""A Hugging Face tokenizer for an MLX export (docs/mlx.md): AFM's SentencePiece model as `tokenizer.json`
and `tokenizer_config.json`, with the chat template V6 in Jinja, so that mlx-lm (through transformers)
encodes text and renders chats to the ids fmlab does (docs/afm-format.md §4, §5.1).

The plain SentencePiece → BPE conversion encodes "\\n" as the byte piece `<0x0A>` and adds the dummy
prefix `▁` after every special piece; AFM writes every "\\n" as the user-defined piece `<n>` and adds
one `▁` at the start of the text only. So the normaliser (i) adds `▁` at the start unless the whole string
is one special piece (the added tokens' own text goes through the normaliser too, and must stay as is),
(ii) maps "\\n" to `<n>`, (iii) " " to `▁`; every added token is matched after normalisation. The
decoder maps `<n>` back to "\\n". BPE merges come from the pieces, ranked by score (a BPE model's
pieces are its merges in order). The file is written as plain JSON: no library is needed to export.

What differs from SentencePiece, on purpose or by design of transformers: the control pieces (`</s>`,
`<pad>`, ...) written literally in text are the special tokens (the template needs `</s>`), and text
that is exactly one special piece gets no leading `▁`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2

from fmlab.data.chat_template import DEFAULT_SYSTEM
from fmlab.data.tokenizer import NEWLINE, SPACE
from fmlab.errors import FmlabError
from fmlab.files import atomic_write

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6  # SentencePiece piece types

TOKENIZER_JSON, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"

# Apple's template V6 (fmlab.data.chat_template.render_text) in Jinja. transformers' `tojson` is the
# template's `json.dumps(ensure_ascii=False)` form, as tamm installs it.
CHAT_TEMPLATE = (
    """{%- macro body(m) -%}
{%- set c = m['content'] if m['content'] is defined and m['content'] is not none else '' -%}
{%- if m['role'] in ['tool', 'function'] and c is mapping -%}{{ c|tojson }}
{%- elif m['role'] in ['tool', 'function'] and c is iterable and c is not string -%}new tools: {% for t in c %}{{ t|tojson }}{% if not loop.last %}{{ '\\n' }}{% endif %}{% endfor %}
{%- else -%}{{ c }}{%- endif -%}
{%- if m['tool_calls'] is defined and m['tool_calls'] is not none -%}<executable_start> ```function{{ '\\n' }}[
{%- for call in m['tool_calls'] -%}
{%- set fn = call['function'] if call['function'] is defined else call -%}
{%- set args = fn['arguments'] if fn['arguments'] is defined else {} -%}
{"name": {{ fn.get('name')|tojson }}, "arguments": {% if args is string %}{{ args }}{% else %}{{ args|tojson }}{% endif %}}
{%- if not loop.last %}, {% endif -%}
{%- endfor -%}]```<executable_end>
{%- endif -%}
{%- if m['response_format'] is defined and m['response_format'] is not none -%}
{%- set rf = m['response_format'] -%}
{%- if rf['type'] != 'json_schema' -%}{{ raise_exception('response_format type must be json_schema') }}{%- endif -%}
{%- set spec = rf['json_schema'] if rf['json_schema'] is defined else {} -%}
{{ '\\n\\nresponse format in json.\\nname: ' ~ spec.get('name') ~ '\\ndescription: ' ~ spec.get('description') ~ '\\nschema: ' }}
{{- (spec['schema'] if spec['schema'] is defined else {})|tojson }}
{%- endif -%}
{%- endmacro -%}
{%- macro role(m) -%}{{ 'tool' if m['role'] in ['tool', 'function'] else m['role'] }}{%- endmacro -%}
</s>
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set first = body(messages[0]) -%}{%- set rest = messages[1:] -%}
{%- else -%}
{%- set first = '"""
    + DEFAULT_SYSTEM
    + """' -%}{%- set rest = messages -%}
{%- endif -%}
{#- like encode_prompt: a conversation that ends with a reply is prompted up to that reply's header -#}
{%- set reply_last = add_generation_prompt and rest and rest[-1]['role'] == 'assistant' -%}
<turn_start> system<n>{{ first }}
{%- if tools -%}<n>system tools: {% for t in tools %}{{ t|tojson }}{% if not loop.last %}<n>{% endif %}{% endfor -%}
{%- endif -%}
<turn_end>
{%- for m in (rest[:-1] if reply_last else rest) -%}<turn_start> {{ role(m) }}<n>{{ body(m) }}<turn_end>{%- endfor -%}
{%- if add_generation_prompt -%}<turn_start> assistant<n>{%- endif -%}"""
)


def read_model_proto(path: str | Path) -> sentencepiece_model_pb2.ModelProto:
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(Path(path).read_bytes())
    except Exception as err:  # protobuf raises its own DecodeError
        raise FmlabError(f"{path} is not a SentencePiece model: {err}") from None
    return proto


def _check_convertible(proto, path) -> None:
    """The settings this conversion reproduces: BPE, no normalisation rules, AFM's whitespace handling."""
    t, n = proto.trainer_spec, proto.normalizer_spec
    problems = []
    if t.model_type != sentencepiece_model_pb2.TrainerSpec.BPE:
        problems.append("model_type is not BPE")
    if n.name not in ("identity", "") or n.precompiled_charsmap:
        problems.append(f"normalizer {n.name!r} (only 'identity' is converted)")
    if not n.add_dummy_prefix or n.remove_extra_whitespaces:
        problems.append("needs add_dummy_prefix=True and remove_extra_whitespaces=False")
    if problems:
        raise FmlabError(f"{path}: cannot convert to a Hugging Face tokenizer: {'; '.join(problems)}")


def bpe_merges(proto) -> list[list[str]]:
    """The merges that rebuild each normal piece from two normal pieces, in the order SentencePiece's
    BPE applies them (higher score first; ties by the pieces' ids)."""
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    normal = {p.piece for p in proto.pieces if p.type == NORMAL}
    ranked = []
    for i, p in enumerate(proto.pieces):
        if p.type != NORMAL or len(p.piece) < 2:
            continue
        pairs = [(p.piece[:k], p.piece[k:]) for k in range(1, len(p.piece))]
        pairs = sorted((pair for pair in pairs if pair[0] in normal and pair[1] in normal), key=lambda lr: ids[lr[0]])
        ranked += [(-p.score, i, ids[left], [left, right]) for left, right in pairs]
    ranked.sort(key=lambda r: r[:3])
    return [r[3] for r in ranked]


def tokenizer_json(proto) -> dict:
    """The `tokenizer.json` document (Hugging Face tokenizers' schema) for an AFM SentencePiece model."""
    pieces = proto.pieces
    specials = [(i, p) for i, p in enumerate(pieces) if p.type in (UNKNOWN, CONTROL, USER_DEFINED)]
    whole_special = "|".join(re.escape(p.piece) for _, p in specials)
    control = "|".join(re.escape(p.piece) for _, p in specials if p.type == CONTROL)
    added = [
        {
            "id": i,
            "content": p.piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": True,  # matched after "\n" → <n>, so a newline in text becomes <n>
            "special": p.piece != NEWLINE,  # <n> decodes to "\n" even with skip_special_tokens
        }
        for i, p in specials
    ]

    def replace(pattern, content, regex=False):
        return {"type": "Replace", "pattern": {"Regex" if regex else "String": pattern}, "content": content}

    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {
            "type": "Sequence",
            "normalizers": [
                # the dummy prefix, once (\A and \z: in Oniguruma, ^ and $ match at every line)
                replace(rf"\A(?!(?:{control})|(?:{whole_special})\z)", SPACE, regex=True),
                replace("\n", NEWLINE),
                replace(" ", SPACE),
            ],
        },
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {
            "type": "Sequence",
            "decoders": [
                replace(NEWLINE, "\n"),
                replace(SPACE, " "),
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0},
            ],
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": pieces[proto.trainer_spec.unk_id].piece,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": True,
            "byte_fallback": proto.trainer_spec.byte_fallback,
            "ignore_merges": False,
            "vocab": {p.piece: i for i, p in enumerate(pieces)},
            "merges": bpe_merges(proto),
        },
    }


def tokenizer_config(proto, context_length: int) -> dict:
    """`tokenizer_config.json`: the fast class (the Llama class would ignore the normaliser), the special
    pieces by name, and the chat template."""
    t = proto.trainer_spec
    name = {i: p.piece for i, p in enumerate(proto.pieces)}
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": name[t.eos_id],
        "pad_token": name[t.pad_id] if t.pad_id >= 0 else None,
        "unk_token": name[t.unk_id],
        "bos_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
        "chat_template": CHAT_TEMPLATE,
    }


def write_hf_tokenizer(sp_model: str | Path, directory: str | Path, context_length: int) -> dict:
    """Write `tokenizer.json` and `tokenizer_config.json` for `sp_model` into `directory`; returns
    {file name: bytes}."""
    proto = read_model_proto(sp_model)
    _check_convertible(proto, sp_model)
    directory = Path(directory)
    sizes = {}
    for name, doc in (
        (TOKENIZER_JSON, tokenizer_json(proto)),
        (TOKENIZER_CONFIG, tokenizer_config(proto, context_length)),
    ):
        text = json.dumps(doc, ensure_ascii=False, indent=None if name == TOKENIZER_JSON else 2)
        with atomic_write(directory / name, "w") as f:
            f.write(text)
        sizes[name] = len(text.encode())
    return sizes
