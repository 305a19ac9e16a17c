"""A tiny training run that tests/test_crash.py kills with SIGKILL at chosen points, then resumes.

    python crash_worker.py OUT_DIR [--resume] [--kill SPEC]

SPEC is where the process kills itself (a real SIGKILL: no cleanup, no exception handlers, no flush):
  step:N         right after optimizer step N is logged to metrics.jsonl
  write:NAME:N   during the N-th atomic write of NAME, with half of the temporary file on disk
  rename:NAME:N  right after the N-th NAME is renamed into place (before its manifest entry is written)
  slow           never: sleep after every step, so the test can kill it from outside at any moment
"""

import os
import signal
import sys
import time
from pathlib import Path

import torch
from helpers import Rows

from fmlab.model.config import preset
from fmlab.model.lora import mark_only_lora_trainable
from fmlab.model.transformer import build_model
from fmlab.train.loop import TrainConfig, train
from fmlab.train.losses import token_loss

CONFIG = dict(epochs=3, precision="f32", learning_rate=1e-2, eval_every=3, keep_best=2, seed=0)
SAVE_EVERY = 1


def run(out_dir, resume=False, callbacks=()):
    """The run every crash scenario repeats; an uninterrupted call gives the reference."""
    model = build_model(preset("tiny"), seed=0)
    with torch.no_grad():
        model.embedding.weight.mul_(25)
    mark_only_lora_trainable(model)
    data = Rows()
    return train(
        model,
        token_loss,
        data,
        list(Rows(n=4, seed=1).epoch(0)),
        TrainConfig(**CONFIG),
        out_dir,
        callbacks=callbacks,
        resume=resume,
        save_every=SAVE_EVERY,
    )


def die():
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep:
    def __init__(self, step):
        self.step = step

    def on_step(self, row):
        if row["step"] == self.step:
            die()


class Slow:
    def on_step(self, row):
        time.sleep(0.15)


def arm_write_kill(name: str, nth: int, after_rename: bool):
    """Patch the two calls of fmlab.files.atomic_write: fsync (the temp file is complete) and replace."""
    count = [0]

    def target(path: str) -> bool:
        base = os.path.basename(path)
        return base == name or (base.startswith(f".{name}.") and base.endswith(".tmp"))

    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        if not after_rename and target(path):
            count[0] += 1
            if count[0] == nth:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)  # half the bytes reached the disk
                die()
        return real_fsync(fd)

    def replace(src, dst):
        real_replace(src, dst)
        if after_rename and target(str(dst)):
            count[0] += 1
            if count[0] == nth:
                die()

    os.fsync, os.replace = fsync, replace


def main(argv):
    out, resume = Path(argv[0]), "--resume" in argv
    spec = argv[argv.index("--kill") + 1] if "--kill" in argv else ""
    kind, _, rest = spec.partition(":")
    callbacks = []
    if kind == "step":
        callbacks.append(KillAtStep(int(rest)))
    elif kind == "slow":
        callbacks.append(Slow())
    elif kind in ("write", "rename"):
        name, nth = rest.rsplit(":", 1)
        arm_write_kill(name, int(nth), after_rename=kind == "rename")
    run(out, resume=resume, callbacks=callbacks)
    print("finished")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1:])
