"""Every notebook runs headlessly with papermill (SMOKE=True) and is committed without outputs.

They run in order in a scratch workspace whose `data/` links to the repo's, so their `../out/` files
link them to each other as in a real run without touching the user's own `out/`."""

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("notebook-run")
    (root / "notebooks").mkdir()
    (root / "data").symlink_to(REPO / "data")
    return root / "notebooks"


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
def test_notebook_runs_headless(path, workspace):
    import papermill

    papermill.execute_notebook(
        str(path),
        str(workspace / path.name),
        parameters={"SMOKE": True},
        kernel_name="python3",
        cwd=str(workspace),
        progress_bar=False,
        execution_timeout=600,
    )
