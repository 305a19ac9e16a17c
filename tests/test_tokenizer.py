"""Tokenizer: "\\n" ↔ <n>, special ids by piece name, Apple's SentencePiece settings, deterministic training."""

import io

import pytest
import sentencepiece as spm

from fmlab.data.tokenizer import SPECIAL_PIECES, Tokenizer, train_tokenizer
from fmlab.errors import FmlabError


def test_special_ids_follow_apples_low_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.pad_id, tok.eos_id, tok.unk_id, tok.newline_id) == (0, 1, 2, 4)
    assert tok.id_of("<mask>") == 3
    assert tok.piece(tok.turn_start_id) == "<turn_start>" and tok.piece(tok.turn_end_id) == "<turn_end>"
    assert tok.piece(tok.executable_start_id) == "<executable_start>"
    assert [tok.id_of(p) for p in SPECIAL_PIECES] == list(range(5, 5 + len(SPECIAL_PIECES)))
    assert tok.vocab_size == len(tok.sp) == 600


def test_newline_is_the_n_piece_and_round_trips(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "Hello there\nfriend\n\nIt is 2024. Ça va? 日本"
    ids = tok.encode(text)
    assert ids.count(tok.newline_id) == 3
    assert tok.id_of("<0x0A>") not in ids  # never the newline byte
    assert tok.decode(ids) == text


def test_no_space_marker_after_newline_and_digits_split(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode("a\nthe")
    assert tok.piece(ids[ids.index(tok.newline_id) + 1]).startswith("\u2581") is False
    assert [tok.piece(i) for i in tok.encode("x 2024")][-4:] == ["2", "0", "2", "4"]


def test_special_pieces_decode_to_text_and_controls_to_nothing(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.decode([tok.eos_id, tok.turn_start_id]) == "<turn_start>"
    assert tok.encode("<turn_start> user")[1] == tok.turn_start_id  # matched as one piece in text


def test_id_of_unknown_piece_raises(tiny_tokenizer):
    with pytest.raises(FmlabError, match="no piece"):
        tiny_tokenizer.id_of("<not_a_piece>")


def test_tokenizer_without_special_pieces_names_file_and_pieces(tmp_path):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["the cat sat on the mat"] * 20),
        model_writer=model,
        model_type="bpe",
        vocab_size=30,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    path = tmp_path / "plain.model"
    path.write_bytes(model.getvalue())
    with pytest.raises(FmlabError) as err:
        Tokenizer.from_file(path)
    assert str(path) in str(err.value) and "<turn_start>" in str(err.value) and "<n>" in str(err.value)
    assert "<pad>" in str(err.value)  # plain SentencePiece has no pad piece


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(FmlabError, match="does not exist"):
        Tokenizer.from_file(tmp_path / "nope.model")


def test_training_is_deterministic_and_atomic(tmp_path):
    texts = [f"line {i} of the play\nwith a second line" for i in range(200)]
    a = train_tokenizer(texts, tmp_path / "a.model", vocab_size=320)
    b = train_tokenizer(texts, tmp_path / "b.model", vocab_size=320)
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert a.encode("the play\nline") == b.encode("the play\nline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "b.model"]  # no temporary files left


def test_training_needs_text(tmp_path):
    with pytest.raises(FmlabError, match="no text"):
        train_tokenizer([], tmp_path / "x.model", vocab_size=300)
