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


def notebook_kernel(name: str = "python3") -> str:
    """Make sure Jupyter's kernel `name` (the one the notebooks name) runs this interpreter, the one
    with fmlab installed: a spec of "python" means the server's own interpreter, which `make lab` starts
    from the virtualenv; a spec that names another interpreter is replaced by one in this environment's
    prefix (`JUPYTER_PREFER_ENV_PATH=1` makes it win over a user-wide one). Returns what it found or did."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
    except NoSuchKernel:
        argv0 = None
    ours = {"python", "python3", f"python3.{sys.version_info.minor}"}
    if argv0 in ours or (argv0 and os.path.exists(argv0) and os.path.samefile(argv0, sys.executable)):
        return f"kernel {name!r} runs {sys.executable}"
    from ipykernel.kernelspec import install

    where = install(kernel_name=name, display_name="Python 3 (fmlab)", prefix=sys.prefix)
    return f"kernel {name!r} ran {argv0 or 'nothing'}; registered {sys.executable} in {where}"


if __name__ == "__main__":  # `make lab`: python -m fmlab.lab.frontend
    print(notebook_kernel())
