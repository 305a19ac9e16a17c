"""Chat template parity with tamm 0.1.0's `AFMChatTemplateV6Preprocessor` (the test oracle; fmlab never
imports tamm): input ids, pre-shifted labels, trained-token masks and collated segment ids, identical on
every sample fmlab ships (`data/*.jsonl`) and on fixtures for tools, tool calls, tool results, "new
tools", `response_format` (with and without name and description), non-ASCII text and HTML-escapable
characters in every JSON position, and conversations ending with an assistant turn (for training and
as a prompt), with two tokenizers: fmlab-tiny's and a 150k-piece one trained with Apple's options whose
special pieces sit at Apple's ids (150000 ...). Every check fails on the first difference, decoded.
"""

import copy
import io
import json
import random
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

pytest.importorskip("tamm")
from sentencepiece import sentencepiece_model_pb2
from tamm.preprocessors.instruct_lm.afm.afm_v6 import AFMChatTemplateV6Preprocessor
from tamm.tokenizers.afm import AFMTokenizer

from fmlab.checkpoints.assets import REPO_ASSETS, TOKENIZER
from fmlab.data.chat_template import IGNORE, encode_chat, encode_prompt, render_text, trained_mask
from fmlab.data.packing import collate
from fmlab.data.tokenizer import NEWLINE, SPECIAL_PIECES, Tokenizer
from fmlab.data.validate import read_messages

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "data").glob("*.jsonl"))
APPLE_VOCAB = 150000  # trainer_spec.vocab_size of Apple's tokenizer.model (docs/afm-format.md §4)

# --- fixtures: every JSON position gets non-ASCII text and characters Jinja's own tojson would escape ---

WEIRD = "Vérone «ß» 東京 🎭 <b>&'\"\\\u2028"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "météo_東京",
            "description": f"Weather {WEIRD}",
            "parameters": {
                "type": "object",
                "properties": {"ville": {"type": "string", "description": WEIRD}, "jour": {"enum": ["lundi", "火曜"]}},
                "required": ["ville"],
            },
        },
    },
    {"name": "zeta", "description": "keys out of order", "a": 1},
]
CALLS = [
    {"type": "function", "function": {"name": "météo_東京", "arguments": json.dumps({"ville": WEIRD, "jour": "火曜"})}},
    {"type": "function", "function": {"name": "zeta", "arguments": "not json: <€>"}},
    {"type": "function", "function": {"name": "zeta", "arguments": json.dumps({"z": 2, "a": ["é", None, True, 1.5]})}},
]  # tamm takes arguments as a JSON string only (OpenAI's form); fmlab also takes an object
SCHEMA = {"type": "object", "properties": {"rôle": {"type": "string", "description": WEIRD}}, "required": ["rôle"]}
SYSTEM = {"role": "system", "content": "Tu es un assistant. 🎭"}
USER = {"role": "user", "content": "Quel temps à Vérone?\nEt à 東京?"}
REPLY = {"role": "assistant", "content": "Il fait beau. «Très»\nBon spectacle!"}
CASES = {
    "tools": ([SYSTEM, USER, REPLY], TOOLS),
    "tools-default-system": ([USER, REPLY], TOOLS),
    "tool-calls-and-results": (
        [
            SYSTEM,
            USER,
            {"role": "assistant", "content": "", "tool_calls": CALLS},
            {"role": "tool", "content": {"ville": WEIRD, "°C": 18, "ok": True}},
            {"role": "function", "content": f"plain text result {WEIRD}"},
            REPLY,
        ],
        TOOLS,
    ),
    "tool-call-with-content": ([USER, {"role": "assistant", "content": "Je regarde.", "tool_calls": CALLS[:1]}], None),
    "new-tools": (
        [
            SYSTEM,
            USER,
            {"role": "assistant", "content": "", "tool_calls": CALLS[1:2]},
            {"role": "tool", "content": [TOOLS[1], {"name": "nouveau", "description": WEIRD}]},
            REPLY,
        ],
        TOOLS[:1],
    ),
    "response-format": (
        [
            {
                **USER,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "Réponse", "description": WEIRD, "schema": SCHEMA},
                },
            },
            {"role": "assistant", "content": json.dumps({"rôle": "Roméo"}, ensure_ascii=False)},
        ],
        None,
    ),
    "response-format-bare": (
        [SYSTEM, {**USER, "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}}}, REPLY],
        None,
    ),
    "multi-turn": (
        [USER, REPLY, {"role": "user", "content": "Encore?"}, {"role": "assistant", "content": "Oui."}],
        None,
    ),
}


# --- tokenizers --------------------------------------------------------------------------------------


def _texts() -> list[str]:
    """Training text for the 150k tokenizer: the shipped data and the fixtures as fmlab renders them,
    then distinct random words so that BPE can reach 150000 pieces in a few seconds."""
    texts = [render_text(s.messages, s.tools) for path in SHIPPED for s in read_messages(path)]
    texts += [render_text(messages, tools) for messages, tools in CASES.values()]
    rng = random.Random(0)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(4, 10))) for _ in range(60000)]
    return texts + [" ".join(words[i : i + 8]) for i in range(0, len(words), 8)]


def train_apple_like(path: Path) -> Path:
    """A SentencePiece BPE model with the trainer options of Apple's tokenizer.model (§4): vocab_size
    150000, byte fallback, split digits, identity normalizer, dummy prefix, no BOS, <pad> 0, </s> 1,
    <unk> 2, <mask> 3, <n> 4; then the special pieces appended as user-defined pieces at 150000 ..."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t.replace("\n", NEWLINE) for t in _texts()),
        model_writer=model,
        model_type="bpe",
        vocab_size=APPLE_VOCAB,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        max_sentencepiece_length=16,
        character_coverage=1.0,
        bos_id=-1,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        control_symbols=["<mask>"],
        user_defined_symbols=[NEWLINE],
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    for piece in SPECIAL_PIECES:
        proto.pieces.add(piece=piece, score=0.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.fixture(scope="module", params=["fmlab-tiny", "150k"])
def tokenizers(request, tmp_path_factory):
    """(fmlab's tokenizer, tamm's AFMTokenizer) over the same model file."""
    if request.param == "fmlab-tiny":
        path = REPO_ASSETS / TOKENIZER
    else:
        path = train_apple_like(tmp_path_factory.mktemp("spm150k") / "tokenizer.model")
    tok = Tokenizer.from_file(path)
    if request.param == "150k":
        assert len(tok) == APPLE_VOCAB + len(SPECIAL_PIECES)
        assert (tok.turn_start_id, tok.turn_end_id, tok.newline_id) == (150000, 150001, 4)
    extra = {"bot_id": tok.turn_start_id, "eot_id": tok.turn_end_id}
    return tok, AFMTokenizer(vocab_path=str(path), extra_properties=extra)


_PREPROCESSORS = {}


def tamm_encode(tamm_tok, messages, tools=None, generate_prefix=False):
    """tamm's preprocessor as the toolkit runs it: the default system turn only when there is none.
    tamm edits the messages in place, so it gets a copy."""
    prepend = messages[0]["role"] != "system"
    key = id(tamm_tok), prepend
    if key not in _PREPROCESSORS:  # one per tokenizer: each compiles the Jinja template once
        _PREPROCESSORS[key] = AFMChatTemplateV6Preprocessor(tamm_tok, prepend_system_message=prepend)
    pre = _PREPROCESSORS[key]
    return pre(copy.deepcopy(messages), tools=copy.deepcopy(tools), generate_prefix=generate_prefix)


# --- comparisons that name the first difference --------------------------------------------------


def _show(tok, ids, i):
    window = [t for t in ids[max(0, i - 12) : i + 6] if t != IGNORE]
    return repr(tok.decode(window))


def assert_same(tok, what, expected, actual, where):
    """Equal lists, else the first differing position with the decoded context on both sides."""
    if expected == actual:
        return
    i = next((i for i, (a, b) in enumerate(zip(expected, actual)) if a != b), min(len(expected), len(actual)))
    pytest.fail(
        f"{where}: {what} differ first at position {i} (tamm {len(expected)}, fmlab {len(actual)} long)\n"
        f"  tamm : {expected[i : i + 4]} ...{_show(tok, expected, i)}\n"
        f"  fmlab: {actual[i : i + 4]} ...{_show(tok, actual, i)}"
    )


def assert_training_parity(tokenizers, messages, tools, where):
    tok, tamm_tok = tokenizers
    expected = tamm_encode(tamm_tok, messages, tools)
    ids, labels = encode_chat(tok, messages, tools)
    assert_same(tok, "input ids", expected.input_ids, ids, where)
    assert_same(tok, "labels", expected.label_ids, labels, where)
    tamm_mask = [False] + [label != IGNORE for label in expected.label_ids[:-1]]
    assert trained_mask(labels) == tamm_mask, where
    assert any(tamm_mask), f"{where}: nothing trained"
    return ids, labels


def apple_segment_ids(ids: torch.Tensor, pad_id: int, eos_id: int) -> torch.Tensor:
    """The toolkit's `_collate_batch` formula (§5.3; tamm has no collator): 1 + cumsum(ids == eos), 0 on pads."""
    segments = torch.ones_like(ids) + (ids == eos_id).long().cumsum(-1)
    return torch.where(ids == pad_id, torch.zeros_like(ids), segments)


# --- tests ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_samples_match_tamm(tokenizers, path):
    samples = read_messages(path)
    rows = [assert_training_parity(tokenizers, s.messages, s.tools, s.where) for s in samples]
    tok = tokenizers[0]
    batch = collate(rows[:8], tok.pad_id, tok.eos_id)
    assert torch.equal(batch["segment_ids"], apple_segment_ids(batch["input_ids"], tok.pad_id, tok.eos_id))
    assert set(batch["segment_ids"][:, 0].tolist()) == {2}  # every sample starts with </s>


@pytest.mark.parametrize("case", CASES)
def test_fixture_matches_tamm(tokenizers, case):
    messages, tools = CASES[case]
    ids, _ = assert_training_parity(tokenizers, messages, tools, case)
    assert "\\u" not in tokenizers[0].decode(ids)  # JSON keeps its non-ASCII text as is, as tamm writes it


@pytest.mark.parametrize("case", CASES)
def test_prompts_match_tamm(tokenizers, case):
    """Generation (`generate_prefix=True`): ending with a user or tool turn, tamm appends the assistant
    header; ending with an assistant turn, the prompt stops after its header (the reply becomes labels)."""
    tok, tamm_tok = tokenizers
    messages, tools = CASES[case]
    full = tamm_encode(tamm_tok, messages, tools, generate_prefix=True)
    assert_same(
        tok, "prompt ids (ending with an assistant turn)", full.input_ids, encode_prompt(tok, messages, tools), case
    )
    ids, _ = encode_chat(tok, messages, tools)
    assert full.input_ids + full.label_ids == ids
    cut = messages[: max(i for i, m in enumerate(messages) if m["role"] != "assistant") + 1]
    expected = tamm_encode(tamm_tok, cut, tools, generate_prefix=True)
    assert expected.label_ids is None
    assert_same(tok, "prompt ids", expected.input_ids, encode_prompt(tok, cut, tools), case)


def test_fixtures_cover_the_json_positions(tokenizers):
    """Not vacuous: the fixtures hold each construct, and the two old spellings fmlab used are gone."""
    tok, _ = tokenizers
    text = "".join(tok.decode(encode_chat(tok, m, t)[0]) for m, t in CASES.values())
    for needle in ("system tools: ", "<executable_start> ```function\n", "new tools: ", "response format in json.\n"):
        assert needle in text
    assert "name: None\ndescription: None\n" in text  # the bare response_format, as tamm writes it
    assert '"type": "function", "function"' in text  # tools keep their key order (no sort_keys)
    assert "<b>&'" in text and "東京" in text  # no HTML escapes, no \\u escapes
