"""Run by test_train.py under torchrun: the same training as one process with accumulation 2."""

import sys

from helpers import Rows
from test_train import fresh_model

from fmlab.train.loop import TrainConfig, train
from fmlab.train.losses import token_loss

train(
    fresh_model(),
    token_loss,
    Rows(n=8, batch_size=2),
    None,
    TrainConfig(epochs=1, precision="f32", learning_rate=1e-2),
    sys.argv[1],
)
