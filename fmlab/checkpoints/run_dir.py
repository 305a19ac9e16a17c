"""Checkpoint policy for a training run: best-N by eval loss, always `<prefix>-final.pt`, a
`checkpoints.json` manifest with checksums, and a `last.pt` resume state (trainable weights,
optimizer, scheduler, RNG, data position). Every file is written atomically.

Also the one place that turns "a checkpoint file or a run directory" into a checkpoint:
`resolve_checkpoint`, `resolve_adapter` and `resolve_draft` (a run's best), and `run_checkpoints`
(every checkpoint of a run, for a side-by-side comparison).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import torch

from fmlab.errors import FmlabError
from fmlab.files import atomic_torch_save, atomic_write, file_sha, safe_name

MANIFEST, LAST = "checkpoints.json", "last.pt"


def read_manifest(checkpoint_dir: str | Path) -> dict:
    """The run's manifest, checked: every file it names is a plain name inside the run directory (a
    crafted manifest must not make fmlab load, or delete, files elsewhere)."""
    path = Path(checkpoint_dir) / MANIFEST
    if not path.is_file():
        raise FmlabError(f"{path}: no checkpoint manifest (was this directory written by fmlab train?)")
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["checkpoints"] + ([manifest["final"]] if manifest.get("final") else [])
        names = [e["path"] for e in entries] + (
            [manifest["best_by_acceptance"]] if manifest.get("best_by_acceptance") else []
        )
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise FmlabError(f"{path}: not a readable checkpoint manifest ({type(err).__name__}: {err})") from None
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
            raise FmlabError(f"{path}: entry {name!r} is not a file name in {checkpoint_dir}; refusing it")
    return manifest


def verify_recorded(path: str | Path) -> None:
    """Refuse a checkpoint whose sha256 differs from what its run's manifest recorded: a truncated,
    half-written or altered file is never loaded silently. Files outside a run directory pass."""
    path = Path(path)
    if not path.is_file() or not (path.parent / MANIFEST).is_file():
        return
    manifest = read_manifest(path.parent)
    for entry in manifest["checkpoints"] + [manifest.get("final") or {}]:
        if entry.get("path") == path.name and entry.get("sha256") and file_sha(path) != entry["sha256"]:
            raise FmlabError(
                f"{path}: its sha256 differs from the one {MANIFEST} recorded, so the file is truncated, "
                f"half-written or was changed after training. Resume the run (--resume) to rewrite it, "
                f"or use another checkpoint of the run"
            )


def best_checkpoint(checkpoint_dir: str | Path, key: str = "eval_loss") -> Path:
    """The kept checkpoint with the lowest `key` (eval loss by default), falling back to the final one."""
    manifest = read_manifest(checkpoint_dir)
    kept = [c for c in manifest["checkpoints"] if c.get(key) is not None]
    chosen = min(kept, key=lambda c: c[key]) if kept else manifest.get("final")
    if not chosen:
        raise FmlabError(f"{checkpoint_dir}: manifest lists no checkpoint")
    return Path(checkpoint_dir) / chosen["path"]


# --- a file or a run directory -> a checkpoint (every caller resolves through these) ----------------

BASE = "base"  # the name of the base model (zero LoRA) among a run's checkpoints
NO_DRAFT = "default"  # `--draft-checkpoint default`: the assets' own draft-model.pt


def resolve_checkpoint(path: str | Path, draft: bool = False, missing: str = "no such checkpoint file") -> Path:
    """A checkpoint file, or a training run directory: its best checkpoint (a draft run's best by
    acceptance when recorded, else by eval loss). Raises `FmlabError("<path>: <missing>")` when there
    is no such file."""

    path = Path(path)
    if path.is_dir():
        best = read_manifest(path).get("best_by_acceptance") if draft else None
        path = path / best if best else best_checkpoint(path)
    if not path.is_file():
        raise FmlabError(f"{path}: {missing}")
    return path


def resolve_adapter(checkpoint: str | Path | None) -> Path | None:
    """An adapter file, or the best checkpoint (by eval loss) of an adapter run directory; None: none."""

    if checkpoint is None:
        return None
    return resolve_checkpoint(checkpoint, missing="no such adapter checkpoint or run directory")


def resolve_draft(spec: str | Path | None) -> Path | None:
    """None for the assets' own draft (None or 'default'), else a draft checkpoint file, or a draft run
    directory's best draft by acceptance (else by eval loss)."""

    if spec is None or str(spec) == NO_DRAFT:
        return None
    return resolve_checkpoint(
        spec,
        draft=True,
        missing="no such draft checkpoint (use 'default', a draft-model-*.pt file or a draft run directory)",
    )


def run_checkpoints(run_dir: str | Path, include_base: bool = True) -> dict[str, Path | None]:
    """{"base": None, "adapter-epoch1": path, ..., "adapter-final": path} from a run's `checkpoints.json`:
    the kept checkpoints in step order, then the final one. A final checkpoint with the same weights
    (sha256) as a kept one is not run twice: that one is named e.g. "adapter-epoch2 (= final)"."""

    manifest = read_manifest(run_dir)
    kept = sorted(manifest["checkpoints"], key=lambda c: (c.get("step") or 0, c["path"]))
    names = {c["path"]: Path(c["path"]).stem for c in kept}
    final = manifest.get("final")
    if final:
        twin = next((c for c in kept if final.get("sha256") and c.get("sha256") == final["sha256"]), None)
        if twin is not None:
            names[twin["path"]] += " (= final)"
        else:
            kept.append(final)
            names[final["path"]] = Path(final["path"]).stem
    models: dict[str, Path | None] = {BASE: None} if include_base else {}
    for entry in kept:
        models[names[entry["path"]]] = Path(run_dir) / entry["path"]
    return models


def _take_learning_rate(optimizer, scheduler, base_lrs: list[float]) -> None:
    """A resume restores everything but the learning rate, which comes from this run's flags: "lower
    the learning rate, then --resume" (the hint after NaN or divergence) must do what it says. The
    same learning rate changes nothing, so an unchanged resume stays exact."""
    if list(scheduler.base_lrs) == base_lrs:
        return
    scheduler.base_lrs = list(base_lrs)
    for group, base, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
        group["initial_lr"], group["lr"] = base, base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


class CheckpointManager:
    def __init__(
        self,
        out_dir: str | Path,
        prefix: str,
        save_weights: Callable,
        keep_best: int = 2,
        config: dict | None = None,
        continue_run: bool = True,
    ):
        self.prefix = safe_name(prefix, "checkpoint prefix")  # before anything is written
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.save_weights, self.keep_best = save_weights, keep_best
        self.manifest = {"prefix": prefix, "config": config or {}, "checkpoints": [], "final": None}
        if continue_run and (self.dir / MANIFEST).is_file():  # a fresh run starts a fresh ranking
            self.manifest = read_manifest(self.dir)
        self._remove_stale_temporaries()

    def _remove_stale_temporaries(self):
        """A run killed inside an atomic write leaves its temporary file `.<name>.<random>.tmp` behind
        (the real file is untouched); remove this run's, which may be as large as a checkpoint."""
        ours = (f".{self.prefix}-", f".{LAST}.", f".{MANIFEST}.", ".metrics.jsonl.")
        for tmp in self.dir.glob(".*.tmp"):
            if tmp.name.startswith(ours):
                tmp.unlink(missing_ok=True)

    def _write_manifest(self):
        with atomic_write(self.dir / MANIFEST, "w") as f:
            json.dump(self.manifest, f, indent=2)

    def _record(self, path: Path, **info) -> dict:
        return {"path": path.name, "sha256": file_sha(path), **info}

    def save_candidate(self, model, name: str, metric: float, **info) -> bool:
        """Save `<prefix>-<name>.pt` if it ranks among the best N by `metric`; drop the ones it beats."""
        entries = self.manifest["checkpoints"]
        worst = max(entries, key=lambda c: c["metric"]) if len(entries) >= self.keep_best else None
        if worst is not None and metric >= worst["metric"]:
            return False
        path = self.dir / safe_name(f"{self.prefix}-{name}.pt", "checkpoint name")
        self.save_weights(model, path)
        entries[:] = [c for c in entries if c["path"] != path.name]
        entries.append(self._record(path, metric=metric, **info))
        entries.sort(key=lambda c: c["metric"])
        dropped = entries[self.keep_best :]
        del entries[self.keep_best :]
        self._write_manifest()  # first the manifest, so a crash leaves no entry without its file
        for entry in dropped:
            (self.dir / entry["path"]).unlink(missing_ok=True)
        return True

    def save_final(self, model, **info) -> Path:
        path = self.dir / f"{self.prefix}-final.pt"
        self.save_weights(model, path)
        self.manifest["final"] = self._record(path, **info)
        self._write_manifest()
        return path

    def annotate(self, path_name: str, **info):
        """Add measurements (e.g. acceptance rate) to a checkpoint's manifest entry."""
        for entry in self.manifest["checkpoints"] + [self.manifest["final"] or {}]:
            if entry.get("path") == path_name:
                entry.update(info)
        self._write_manifest()

    # --- exact resume ------------------------------------------------------------------------------

    def save_last(self, model, optimizer, scheduler, scaler, position: dict):
        state = {
            "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "position": position,
        }
        atomic_torch_save(state, self.dir / LAST)

    def load_last(self, model, optimizer, scheduler, scaler) -> dict:
        path = self.dir / LAST
        if not path.is_file():
            raise FmlabError(f"{path}: nothing to resume from (no last.pt in the checkpoint directory)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            trainable = state["trainable"]
        except Exception as err:  # truncated or foreign file, a pickle payload, another layout
            raise FmlabError(
                f"{path}: not a readable resume state ({type(err).__name__}: {str(err)[:200]}); "
                f"start the run again without --resume"
            ) from None
        params = dict(model.named_parameters())
        wrong = sorted(n for n, t in trainable.items() if n not in params or params[n].shape != t.shape)
        if wrong:
            raise FmlabError(f"{path}: resume state does not fit this model (missing or mis-shaped: {wrong[:3]} ...)")
        with torch.no_grad():
            for n, t in trainable.items():
                params[n].copy_(t)
        configured = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _take_learning_rate(optimizer, scheduler, configured)
        if scaler is not None and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        return state["position"]
