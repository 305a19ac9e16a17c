"""Shared tiny fixtures. Everything is hermetic: models are random-initialised from presets."""

import pytest
import torch
from helpers import randomize_lora

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


def tiny_chat_corpus(n: int = 300) -> list[str]:
    """A few hundred chat-rendered lines from a fixed word list: enough for role words to be pieces."""
    import random

    from fmlab.data.chat_template import render_text

    rng = random.Random(0)
    words = (
        "the a an of to and in is it you that he was for on are with as I his they be at one have this "
        "from or had by word but what some we can out other were all there when up use your how said "
        "scene act play king queen castle night enter exit speak love why where 0 1 2 3 4 5 6 7 8 9 "
        "name weather city today json tool call result"
    ).split()
    texts = []
    for i in range(n):
        line = lambda k: " ".join(rng.choice(words) for _ in range(k)).capitalize() + rng.choice(".?!")
        messages = [{"role": "user", "content": line(8)}, {"role": "assistant", "content": line(10) + "\n" + line(6)}]
        if i % 3 == 0:
            messages.insert(0, {"role": "system", "content": line(6)})
        texts.append(render_text(messages))
    texts.append('{"name": "get_weather", "arguments": {"city": "Paris"}} ```function <>&\'"[]{}:,-_/')
    return texts


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A SentencePiece BPE tokenizer (vocab 600) with all of Apple's special pieces, trained once per session."""
    from fmlab.data.tokenizer import train_tokenizer

    return train_tokenizer(tiny_chat_corpus(), tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=600)
