"""`fmlab demo`: run the notebooks in order, headlessly, on the embedded default, into `out/`.

The notebooks find each other's files through `../out` and read `../data`, relative to the folder they
run in. A checkout runs them in `notebooks/`, so they write the repo's `out/`. An installed fmlab has no
writable folder beside its notebooks: it writes `./out` of the current directory and runs the notebooks
from a scratch folder whose `../out` and `../data` are links to that `out/` and the installed data.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from fmlab.checkpoints.assets import CHECKOUT, shipped_dir
from fmlab.errors import FmlabError

NOTEBOOK_DIR = shipped_dir("notebooks")
OUT = (CHECKOUT or Path()) / "out"  # the notebooks' `../out`: the only link between them


@contextmanager
def _working_dir(notebook_dir: Path, out_dir: Path):
    """A folder to run the notebooks in whose `../out` is `out_dir` and `../data` the shipped data."""
    if out_dir == notebook_dir.resolve().parent / "out":
        yield notebook_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix="fmlab-demo-"))
    try:
        (scratch / "notebooks").mkdir()
        (scratch / "out").symlink_to(out_dir, target_is_directory=True)
        (scratch / "data").symlink_to(shipped_dir("data").resolve(), target_is_directory=True)
        yield scratch / "notebooks"
    finally:
        shutil.rmtree(scratch)  # removes the links, never what they point to


def run_notebooks(
    smoke: bool = False, only: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR, out_dir: Path = OUT
) -> list[dict]:
    """Execute every numbered notebook (or those whose name starts with one of `only`) with papermill;
    executed copies land in `out/notebooks/`. Returns per-notebook timings."""
    try:
        import papermill
    except ImportError:
        raise FmlabError("fmlab demo runs the notebooks with papermill: pip install papermill ipykernel") from None

    notebooks = sorted(Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(only))]
    if not notebooks:
        raise FmlabError(f"no notebooks to run in {notebook_dir}")
    out_dir = Path(out_dir).resolve()
    executed = out_dir / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    results = []
    with _working_dir(Path(notebook_dir), out_dir) as cwd:
        for i, nb in enumerate(notebooks, 1):
            print(f"[{i}/{len(notebooks)}] {nb.stem} ...", flush=True)
            start = time.perf_counter()
            try:
                papermill.execute_notebook(
                    str(nb),
                    str(executed / nb.name),
                    parameters={"SMOKE": smoke},
                    kernel_name="python3",
                    cwd=str(cwd),
                    progress_bar=True,
                )
            except papermill.PapermillExecutionError as err:
                raise FmlabError(
                    f"{nb.name} failed in cell {err.exec_count}: {err.ename}: {err.evalue}\n"
                    f"  executed notebook: {executed / nb.name}"
                ) from None
            seconds = time.perf_counter() - start
            results.append({"notebook": nb.stem, "seconds": round(seconds, 1)})
            print(f"      done in {seconds:.0f} s", flush=True)
    return results
