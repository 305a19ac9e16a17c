"""Files written so that a crash never leaves half of one: atomic writes, checksums, safe names."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

import torch

from fmlab.errors import FmlabError


def file_sha(path: str | os.PathLike, algo: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (checkpoints can be gigabytes)."""
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def safe_name(name: str, what: str = "name") -> str:
    """A file name component from the user (an adapter name, a checkpoint prefix): one plain name, so
    that joining it to an output directory can never point outside it."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise FmlabError(
            f"{what} {name!r} is not a plain file name: no '/', '\\', NUL, or leading '.' "
            f"(it must not point outside the output directory)"
        )
    return name


def _os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`, if any (torch.save reports a failed write as a RuntimeError)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb"):
    """Yield a temporary file next to `path`; on success fsync it and rename it over `path`.

    A crash or exception leaves the previous `path` untouched and removes the temporary file. A failed
    write (disk full, no permission) becomes an FmlabError that says so and that the old file is kept.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise FmlabError(f"cannot write {path}: {err.strerror or err}") from err
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        cause = _os_error(err) if isinstance(err, Exception) else None
        if cause is not None:
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise FmlabError(
                f"writing {path} failed: {cause.strerror or cause} ({kept}); free space or "
                f"fix permissions and run again (a training run: add --resume)"
            ) from err
        raise


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    with atomic_write(path) as f:
        torch.save(obj, f)
