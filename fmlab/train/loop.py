"""One training loop for everything fmlab trains: adapters (token cross-entropy), drafts
(distillation loss), and the embedded base (full-parameter pretraining). Only the loss differs.

`loss_fn(model, batch) -> (loss_sum, target_count)`: a *sum* over target tokens, so gradient
accumulation divides by the target tokens of all accumulated micro-batches (and all ranks) and
batch size × accumulation behaves exactly like one big batch.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from fmlab.checkpoints.apple_format import save_adapter
from fmlab.checkpoints.run_dir import CheckpointManager
from fmlab.data.chat_template import IGNORE
from fmlab.errors import FmlabError
from fmlab.files import atomic_write
from fmlab.model.precision import AUTO, PRECISIONS, autocast, choose_precision, describe_choice, prepare_precision
from fmlab.train.reporters import make_reporters, parse_report_to


@dataclass
class TrainConfig:
    epochs: int = 2
    learning_rate: float = 1e-3
    warmup_epochs: float | None = None  # Apple's --warmup-epochs; else `warmup_fraction` of all steps
    warmup_fraction: float = 0.1
    schedule: str = "cosine"  # "cosine" (adapters) or "constant" (drafts) after warmup
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    weight_decay: float = 1e-2
    clip_grad_norm: float = 1.0
    precision: str = AUTO  # resolved by train(): see fmlab.model.precision
    activation_checkpointing: bool = False
    checkpoint_every_n: int = 2  # with activation checkpointing: every n-th block (Apple: 2)
    compile_model: bool = False
    eval_every: int | None = None  # also evaluate every N optimizer steps
    checkpoint_frequency: int = 1  # save a candidate every N epochs
    keep_best: int = 2
    prefix: str = "adapter"
    loss_update_frequency: int = 3  # progress-bar refresh, in steps
    seed: int = 0
    report_to: tuple[str, ...] = ()  # also log to "tensorboard", "mlflow" (fmlab.train.reporters)
    settings_from: dict = field(default_factory=dict)  # the CLI's record: given / assets / default

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise FmlabError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.schedule not in ("cosine", "constant"):
            raise FmlabError(f"schedule must be cosine or constant, not {self.schedule!r}")
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "checkpoint_frequency", "keep_best"):
            if getattr(self, name) < 1:
                raise FmlabError(f"--{name.replace('_', '-')} must be at least 1")
        if self.learning_rate <= 0:
            raise FmlabError("--learning-rate must be positive")
        self.report_to = parse_report_to(self.report_to)


def lr_lambda(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, config.epochs * steps_per_epoch)
    warmup = (
        config.warmup_epochs * steps_per_epoch if config.warmup_epochs is not None else config.warmup_fraction * total
    )
    warmup = min(max(warmup, 0), total)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


class DivergenceWarning(UserWarning):
    """The training loss is rising far above where it started."""


class DivergenceCheck:
    """Warns once (the run goes on; NaN/inf still stop it) when the smoothed training loss exceeds
    `factor` x its start: the mean of the first `first` step losses of this run (or of a resume).
    Smoothing is an exponential moving average (`smooth` 0.9: about the last 10 steps), so one hard
    batch does not trigger it."""

    def __init__(self, factor: float = 2.0, first: int = 5, smooth: float = 0.9):
        self.factor, self.first, self.smooth = factor, first, smooth
        self.losses: list[float] = []
        self.ema = None
        self.fired = False

    @property
    def start(self) -> float | None:
        return sum(self.losses) / len(self.losses) if len(self.losses) == self.first else None

    def update(self, loss: float) -> bool:
        """Feed one step's loss; True the first time the smoothed loss passes factor x start."""
        if len(self.losses) < self.first:
            self.losses.append(loss)
        self.ema = loss if self.ema is None else self.smooth * self.ema + (1 - self.smooth) * loss
        if self.fired or self.start is None or self.ema <= self.factor * self.start:
            return False
        self.fired = True
        return True

    def message(self, step: int, lr: float) -> str:
        return (
            f"training loss is diverging: smoothed {self.ema:.4g} at step {step} is over {self.factor:g}x "
            f"its start {self.start:.4g}. Lower the learning rate (now {lr:.3g}), try --precision f32, "
            f"then --resume (the new learning rate applies) or start again"
        )


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@torch.no_grad()
def evaluate(model, loss_fn, batches, config: TrainConfig) -> float:
    """Mean loss per target token over `batches`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = count = 0.0
    with autocast(config.precision, device):
        for batch in batches:
            loss, n = loss_fn(model, _to(batch, device))
            total, count = total + float(loss), count + int(n)
    model.train(was_training)
    return total / max(count, 1)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _targets(batch: dict) -> int:
    labels = batch["label_ids"]
    return int(((labels != IGNORE) & (labels != 0)).sum())


def distributed() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def _callbacks(callbacks, event: str, payload: dict):
    for cb in callbacks:
        handler = getattr(cb, event, None)
        if handler:
            handler(payload)


def _trim_metrics(path: Path, position: dict):
    """On resume, drop what a crashed run logged after its last saved state: whole rows (an eval row
    can share the saved step) and half-written ones, by the file size the state recorded."""
    if not path.is_file():
        return
    text = path.read_bytes()[: position["metrics_bytes"]].decode()
    with atomic_write(path, "w") as f:
        f.write(text)


def train(
    model,
    loss_fn,
    train_data,
    eval_data,
    config: TrainConfig,
    out_dir: str | Path,
    save_weights: Callable | None = None,
    callbacks=(),
    resume: bool = False,
    save_every: int | None = None,
) -> dict:
    """Train the parameters of `model` that require grad.

    train_data: has `len()` (batches per epoch) and `epoch(n)` (that epoch's batches, deterministic);
    eval_data: a list of batches or None (then checkpoints rank by train loss, as Apple's do);
    save_weights(model, path): writes one checkpoint file (adapter, draft, ...);
    save_every: also write the resume state every N steps (crash safety for long runs).
    """

    out_dir = Path(out_dir)
    rank, world = distributed()
    device = next(model.parameters()).device
    choice = choose_precision(config.precision, device)
    if world > 1:  # every rank trains at one precision: rank 0's measurement decides
        shared = [choice]
        torch.distributed.broadcast_object_list(shared, src=0)
        choice = shared[0]
    config = replace(config, precision=choice.precision)
    torch.manual_seed(config.seed)
    scaler = prepare_precision(model, config.precision)
    model.checkpoint_every = config.checkpoint_every_n if config.activation_checkpointing else 0
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise FmlabError("nothing to train: no parameter requires grad")
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    group = config.gradient_accumulation_steps * world  # batches per optimizer step
    steps_per_epoch = len(train_data) // group if world > 1 else math.ceil(len(train_data) / group)
    if steps_per_epoch < 1:
        raise FmlabError(
            f"{len(train_data)} batches per epoch is fewer than one optimizer step "
            f"({group} batches); lower --batch-size or --gradient-accumulation-steps"
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config, steps_per_epoch))
    ckpt = CheckpointManager(
        out_dir,
        config.prefix,
        save_weights or save_adapter,
        config.keep_best,
        config={**asdict(config), "precision_reason": choice.reason},
        continue_run=resume,
    )
    metrics_path = out_dir / "metrics.jsonl"
    position = {"epoch": 0, "step_in_epoch": 0, "step": 0}
    if resume:
        position = ckpt.load_last(model, optimizer, scheduler, scaler)
        _trim_metrics(metrics_path, position)
    elif rank == 0:
        metrics_path.write_text("")
    if rank == 0:
        print(describe_choice(choice), file=sys.stderr)
    run_model = model
    if world > 1:
        run_model = torch.nn.parallel.DistributedDataParallel(model)
    if config.compile_model:
        run_model = torch.compile(run_model)
    total_steps = config.epochs * steps_per_epoch
    reporters = make_reporters(config.report_to, out_dir, asdict(config)) if rank == 0 else []
    callbacks = [*callbacks, *reporters]
    bar = _progress(total_steps, position["step"], disable=rank != 0)
    run_start, first_step = time.perf_counter(), position["step"]
    step, summary = position["step"], {"eval_loss": None, "loss": None}
    divergence = DivergenceCheck()
    model.train()

    def log(row):
        if rank == 0:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def checkpoint_state(epoch, step_in_epoch):
        if rank == 0:
            ckpt.save_last(
                model,
                optimizer,
                scheduler,
                scaler,
                {
                    "epoch": epoch,
                    "step_in_epoch": step_in_epoch,
                    "step": step,
                    "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0,
                },
            )

    def run_eval(epoch_progress):
        if eval_data is None:
            return None
        loss = evaluate(model, loss_fn, eval_data, config)
        row = {"step": step, "epoch": round(epoch_progress, 4), "eval_loss": loss}
        log(row)
        _callbacks(callbacks, "on_eval", row)
        return loss

    for epoch in range(position["epoch"], config.epochs):
        batches = iter(train_data.epoch(epoch))
        first = position["step_in_epoch"] if epoch == position["epoch"] else 0
        for _ in range(first * group):
            next(batches)
        for s in range(first, steps_per_epoch):
            start = time.perf_counter()
            chunk = list(itertools.islice(batches, group))
            targets = sum(_targets(b) for b in chunk)
            mine = chunk[rank::world]
            loss_sum = torch.zeros((), device=device)
            for j, batch in enumerate(mine):
                sync = run_model.no_sync() if world > 1 and j < len(mine) - 1 else contextlib.nullcontext()
                with sync, autocast(config.precision, device):
                    loss, _ = loss_fn(run_model, _to(batch, device))
                    scaled = loss * (world / max(targets, 1))  # DDP averages over ranks
                    (scaler.scale(scaled) if scaler else scaled).backward()
                loss_sum += loss.detach().float()
            if world > 1:
                torch.distributed.all_reduce(loss_sum)
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
            step_loss = float(loss_sum) / max(targets, 1)
            if not math.isfinite(step_loss) or (scaler is None and not torch.isfinite(grad_norm)):
                bar.close()
                _callbacks(reporters, "on_end", {})
                raise FmlabError(
                    f"non-finite {'loss' if not math.isfinite(step_loss) else 'gradient'} at step {step + 1} "
                    f"(epoch {epoch + 1}); stopped without saving it. The last good state is in {out_dir} "
                    f"(resume with --resume after lowering the learning rate or using --precision f32)"
                )
            lr = scheduler.get_last_lr()[0]
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            seconds = time.perf_counter() - start
            tokens = sum(int((b["input_ids"] != 0).sum()) for b in chunk)
            row = {
                "step": step,
                "epoch": round(epoch + (s + 1) / steps_per_epoch, 4),
                "loss": step_loss,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens_per_s": round(tokens / seconds, 1),
                "peak_memory_mb": round(peak_memory_mb(device), 1),
                "precision": config.precision,  # what `auto` resolved to (the reason is in the manifest)
            }
            log(row)
            # the time left at this run's pace so far, evaluations and checkpoint writes included
            eta = (time.perf_counter() - run_start) / (step - first_step) * (total_steps - step)
            _callbacks(callbacks, "on_step", {**row, "eta_s": round(eta, 1)})
            summary["loss"] = step_loss
            if divergence.update(step_loss):
                summary["diverged_at_step"] = step
                if rank == 0:
                    warnings.warn(divergence.message(step, lr), DivergenceWarning, stacklevel=2)
            bar.update(1)
            if step % config.loss_update_frequency == 0:
                bar.set_postfix(loss=f"{step_loss:.4f}", eta=_clock(eta), refresh=False)
            if config.eval_every and step % config.eval_every == 0 and s + 1 < steps_per_epoch:
                summary["eval_loss"] = run_eval(row["epoch"])
                if rank == 0 and summary["eval_loss"] is not None:
                    ckpt.save_candidate(
                        model,
                        f"step{step}",
                        summary["eval_loss"],
                        step=step,
                        epoch=row["epoch"],
                        eval_loss=summary["eval_loss"],
                    )
                checkpoint_state(epoch, s + 1)
            elif save_every and step % save_every == 0:
                checkpoint_state(epoch, s + 1)
        summary["eval_loss"] = run_eval(epoch + 1)
        metric = summary["eval_loss"] if summary["eval_loss"] is not None else summary["loss"]
        if rank == 0 and ((epoch + 1) % config.checkpoint_frequency == 0 or epoch + 1 == config.epochs):
            ckpt.save_candidate(
                model,
                f"epoch{epoch + 1}",
                metric,
                step=step,
                epoch=epoch + 1,
                eval_loss=summary["eval_loss"],
                train_loss=summary["loss"],
            )
            ckpt.save_final(
                model, step=step, epoch=epoch + 1, eval_loss=summary["eval_loss"], train_loss=summary["loss"]
            )
        checkpoint_state(epoch + 1, 0)
    if summary["loss"] is not None:  # the last step's loss, as the plot and the summary show it
        bar.set_postfix(loss=f"{summary['loss']:.4f}", refresh=False)
    bar.close()
    summary.update(steps=step, out_dir=str(out_dir), manifest=ckpt.manifest)
    _callbacks(callbacks, "on_end", summary)
    return summary


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def _progress(total: int, initial: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, initial=initial, desc="train", unit="step", disable=disable, file=sys.stderr, dynamic_ncols=True
    )
