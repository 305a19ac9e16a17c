"""A built wheel carries the embedded model, the notebooks and their data: installed into a scratch
virtualenv (the dev venv's dependencies, not its editable fmlab), fmlab works from outside the repo."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# .gitignore's build outputs and caches: the wheel is built from what a clean clone has
IGNORED = (".git", ".venv", "out", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ipynb_checkpoints")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    # built from a copy, so setuptools' build/ and egg-info never land in the working tree
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*IGNORED), symlinks=True)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist")], check=True)
    (wheel,) = (tmp / "dist").glob("fmlab-*.whl")

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True)
    # plain directory lines: the .pth files there (the editable fmlab's finder) are not run
    dev_site = dict.fromkeys((sysconfig.get_path("purelib"), sysconfig.get_path("platlib")))
    (Path(site.strip()) / "fmlab-dev-deps.pth").write_text("".join(f"{d}\n" for d in dev_site))
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)

    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("FMLAB_ASSETS", "PYTHONPATH")}

    def run(*argv, timeout=120):
        return subprocess.run(
            [venv / "bin" / argv[0], *argv[1:]], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout
        )

    return venv, elsewhere, run


def test_fmlab_is_the_wheels(installed):
    venv, _, run = installed
    # find_spec locates the package without importing it (and torch with it)
    result = run("python", "-c", "import importlib.util; print(importlib.util.find_spec('fmlab').origin)")
    module = Path(result.stdout.strip())
    assert module.is_relative_to(venv) and module.parts[-2:] == ("fmlab", "__init__.py"), result


def test_doctor_passes_the_installed_assets(installed):
    venv, _, run = installed
    result = run("fmlab", "doctor")
    lines = result.stdout.splitlines()
    first = next(i for i, line in enumerate(lines) if " assets files " in line)
    last = next(i for i, line in enumerate(lines) if " disk space " in line)
    assert not [line for line in lines[first:last] if line.startswith("FAIL")], result.stdout
    assert f"all present in {venv / 'share' / 'fmlab' / 'assets'}" in lines[first]
    assert "5 files match manifest.json" in result.stdout


def test_generate_prints_text(installed):
    _, _, run = installed
    result = run("fmlab", "generate", "-p", "Tell me a story.", "-m", "8", "-t", "0")
    assert result.returncode == 0, result.stderr
    text, stats = result.stdout.strip().rsplit("\n", 1)
    assert text.strip() and stats.startswith("[8 tokens"), result.stdout


def test_demo_writes_out_of_the_current_directory(installed):
    """Notebook 01 reads `../data` and writes `../out`: both resolve from an installed fmlab."""
    _, elsewhere, run = installed
    result = run("fmlab", "demo", "--smoke", "--only", "01", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    executed = (elsewhere / "out" / "notebooks" / "01_data.ipynb").read_text()
    assert "../data/train.jsonl: " in executed  # the installed data, not the fallback
    assert "share/fmlab/assets/tokenizer.model" in executed  # the kernel imported the wheel's fmlab
    assert (elsewhere / "out" / "broken.jsonl").is_file() and (elsewhere / "out" / "summary.html").is_file()
