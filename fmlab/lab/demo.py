"""`fmlab demo`: run the notebooks in order, headlessly, on the embedded default, into `out/`."""

from __future__ import annotations

import time
from pathlib import Path

from fmlab.errors import FmlabError

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
OUT = NOTEBOOK_DIR.parent / "out"  # the notebooks' `../out`: the only link between them


def run_notebooks(
    smoke: bool = False, only: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR, out_dir: Path = OUT
) -> list[dict]:
    """Execute every numbered notebook (or those whose name starts with one of `only`) with papermill;
    executed copies land in `out/notebooks/`. Returns per-notebook timings."""
    import papermill

    notebooks = sorted(notebook_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if nb.name.startswith(tuple(only))]
    if not notebooks:
        raise FmlabError(f"no notebooks to run in {notebook_dir}")
    executed = Path(out_dir).resolve() / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    results = []
    for i, nb in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {nb.stem} ...", flush=True)
        start = time.perf_counter()
        try:
            papermill.execute_notebook(
                str(nb),
                str(executed / nb.name),
                parameters={"SMOKE": smoke},
                kernel_name="python3",
                cwd=str(nb.parent),
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
