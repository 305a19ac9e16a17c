"""Shared tiny fixtures. Everything is hermetic: models are random-initialised from presets."""

import pytest
import torch
from helpers import randomize_lora, tiny_chat_corpus

from fmlab.model.config import preset
from fmlab.model.transformer import build_model

# --- models (foundation) ---------------------------------------------------------------------------


@pytest.fixture
def tiny_config():
    return preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    """A tiny AFM (2 regular + 2 KV-reuse layers) with a *non-zero* random adapter, so LoRA matters."""
    model = build_model(tiny_config, seed=0).eval()
    randomize_lora(model, 0.05)
    return model


def sharp(model, scale=30.0):
    """Make a random model's next-token choice decisive, so greedy paths are far from float ties."""
    with torch.no_grad():
        model.embedding.weight.mul_(scale)
    return model


# --- tokenizer and chat data (data pipeline) -------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A SentencePiece BPE tokenizer (vocab 600) with all of Apple's special pieces, trained once per session."""
    from fmlab.data.tokenizer import train_tokenizer

    return train_tokenizer(tiny_chat_corpus(), tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=600)
