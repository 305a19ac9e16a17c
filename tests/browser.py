"""JupyterLab and headless Chromium for tests/test_browser.py: a scratch Jupyter server (its own config,
data, runtime and workspace folders; no token; 127.0.0.1 only) with a kernel running this interpreter,
and a Selenium driver on Debian's chromedriver. Nothing here downloads anything."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMEDRIVER = Path("/usr/bin/chromedriver")
KERNEL = "fmlab-browser-test"


def missing_browser() -> str | None:
    """Why the browser test cannot run here (one line), or None when it can."""
    for module, what in [("selenium", "selenium (the dev extra)"), ("jupyterlab", "jupyterlab (the dev extra)")]:
        try:
            __import__(module)
        except ImportError:
            return f"no {what} installed"
    if not CHROMEDRIVER.exists() or not (shutil.which("chromium") or shutil.which("chromium-browser")):
        return f"no Chromium / {CHROMEDRIVER} (Debian: apt-get install chromium chromium-driver; make test does it as root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """`with Lab(root) as lab:` a JupyterLab server on `root`; `lab.url(path)` is a page of it."""

    def __init__(self, root: Path, scratch: Path):
        self.root, self.scratch, self.port = root, scratch, _free_port()
        scratch.mkdir(parents=True, exist_ok=True)
        self.process = None

    def _env(self) -> dict:
        dirs = {name: self.scratch / name for name in ("config", "data", "runtime")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        # the kernel is this interpreter, importing fmlab from where this test imports it (a scratch copy too)
        import fmlab

        spec = dirs["data"] / "kernels" / KERNEL
        spec.mkdir(parents=True, exist_ok=True)
        (spec / "kernel.json").write_text(
            json.dumps(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "fmlab (browser test)",
                    "language": "python",
                    "env": {"PYTHONPATH": str(Path(fmlab.__file__).resolve().parents[1]), "FMLAB_WIDGETS": ""},
                }
            )
        )
        labconfig = dirs["config"] / "labconfig"  # no "get Jupyter news?" popup over the page
        labconfig.mkdir(exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
        )
        return {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(dirs["config"]),
            "JUPYTER_DATA_DIR": str(dirs["data"]),
            "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]),
            "JUPYTER_PLATFORM_DIRS": "1",
        }

    def __enter__(self):
        log = (self.scratch / "jupyter.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={self.port}",
                "--ServerApp.port_retries=0",
                "--IdentityProvider.token=",
                "--ServerApp.password=",
                f"--ServerApp.root_dir={self.root}",
                f"--LabApp.workspaces_dir={self.scratch / 'workspaces'}",
                f"--LabApp.user_settings_dir={self.scratch / 'settings'}",
                "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run cells by command
                f"--MappingKernelManager.default_kernel_name={KERNEL}",
                "--ServerApp.terminals_enabled=False",
                *(["--allow-root"] if os.geteuid() == 0 else []),
            ],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited: {(self.scratch / 'jupyter.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url("api/status"), timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("jupyter lab did not answer within 60 s")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def __exit__(self, *exc):
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def chromium(width: int = 1400, height: int = 1100):
    """Headless Chromium through Debian's chromedriver, keeping the browser's console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def notebook(cells: list[str]) -> dict:
    """An nbformat-4 notebook of code cells on the test kernel."""
    return {
        "cells": [
            {"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
            for i, src in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"name": KERNEL, "display_name": "fmlab (browser test)", "language": "python"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }
