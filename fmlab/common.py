"""Small shared pieces: the user-error type, device/dtype resolution, atomic file writes, the assets path."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import torch

REPO_ASSETS = Path(__file__).resolve().parent.parent / "assets"


class FmlabError(Exception):
    """An error the user can fix (bad data, flags, files). The CLI prints it without a traceback."""


def assets_dir(path: str | os.PathLike | None = None) -> Path:
    """The assets directory in use: an explicit path, else $FMLAB_ASSETS, else the embedded default."""
    chosen = Path(path or os.environ.get("FMLAB_ASSETS") or REPO_ASSETS).expanduser()
    if not chosen.is_dir():
        raise FmlabError(f"assets directory {chosen} does not exist (set --assets or FMLAB_ASSETS)")
    return chosen


def file_sha(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (checkpoints can be gigabytes)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_device(name: str | None = None) -> torch.device:
    """`name` if given, else the best available: CUDA, then MPS, then CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type in ("cpu", "mps")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a temporary file next to `path`; on success fsync it and rename it over `path`.

    A crash or exception leaves the previous `path` untouched and removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)           # mkstemp makes 0600; give the file normal permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)
