"""Every notebook runs headlessly with papermill (SMOKE=True) and is committed without outputs."""
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_parameters(path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} carries outputs"
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), f"{path.name}: first code cell untagged"
    assert "SMOKE" in "".join(code[0]["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless(path, tmp_path):
    import papermill

    papermill.execute_notebook(str(path), str(tmp_path / path.name), parameters={"SMOKE": True},
                               kernel_name="python3", cwd=str(path.parent), progress_bar=False,
                               execution_timeout=600)
