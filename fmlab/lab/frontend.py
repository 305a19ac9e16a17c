"""Is a notebook front end attached? Decides whether the lab's views draw live or as static output."""

from __future__ import annotations

import os


def in_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, VS Code, or papermill's headless one)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def resolve_live(live: bool | None) -> bool:
    if live is not None:
        return bool(live)
    return in_kernel() and os.environ.get("FMLAB_WIDGETS", "").lower() != "static"
