"""Shared tiny fixtures. Everything is hermetic: models are random-initialised from presets."""
import pytest
import torch

from fmlab.config import preset
from fmlab.model import build_model

# --- models (foundation) ---------------------------------------------------------------------------


@pytest.fixture
def tiny_config():
    return preset("tiny")


@pytest.fixture
def tiny_model(tiny_config):
    """A tiny AFM (2 regular + 2 KV-reuse layers) with a *non-zero* random adapter, so LoRA matters."""
    model = build_model(tiny_config, seed=0).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_b." in name:
                p.normal_(0, 0.05)
    return model
