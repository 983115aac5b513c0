"""End to end in the FiftyOne App: a real server, headless Chromium (Debian's
package, driven by Playwright), the operator browser and the run form.

Screenshots land in ``artifacts/browser/`` (``$DIFFUPROMPTER_ARTIFACTS``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(
    os.environ.get(
        "DIFFUPROMPTER_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts" / "browser"
    )
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser():
    missing = []
    if not os.path.exists(CHROMIUM):
        missing.append("Debian's chromium (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (pip install -e '.[test]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser test needs {missing}")
        pytest.skip(f"browser test needs {missing}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def app_server(tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fiftyone.server.main",
            "--port",
            str(port),
            "--address",
            "127.0.0.1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(90):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError((tmp_path / "server.log").read_text())
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        log.close()


def _field_input(page, label: str):
    """The input of the form field whose label is exactly ``label``."""
    row = page.locator(
        "div.MuiGrid-item", has=page.locator("p", has_text=re.compile(f"^{label}$"))
    )
    return row.last.locator("input").first


@pytest.mark.slow
def test_operator_runs_from_the_app_form(image_dataset, tiny_models, app_server):
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    sd, sam = tiny_models
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(f"{app_server}/datasets/{image_dataset.name}")
        expect(page.get_by_text("ground_truth").first).to_be_visible(timeout=60_000)
        page.screenshot(path=ARTIFACTS / "1-dataset.png")

        page.keyboard.press("`")
        page.keyboard.type("DiffuPrompter")
        for label in (
            "generate pseudo-labels",
            "re-threshold pseudo-labels",
            "evaluate pseudo-labels",
            "import iSAID ground truth",
            "import NWPU VHR-10",
            "import a scene-classification collection",
        ):
            expect(page.get_by_text(f"DiffuPrompter: {label}")).to_be_visible()
        page.screenshot(path=ARTIFACTS / "2-operator-browser.png")

        page.get_by_text("DiffuPrompter: generate pseudo-labels").click()
        expect(page.get_by_text("Brain key")).to_be_visible(timeout=30_000)
        for label, value in (
            ("Stable Diffusion", sd),
            ("SAM", sam),
            ("Loops L", "2"),
            ("Resolution", "64"),
        ):
            field = _field_input(page, label)
            field.fill(value)
            expect(field).to_have_value(value)
        page.screenshot(path=ARTIFACTS / "3-form.png", full_page=True)
        page.get_by_role("button", name="Execute", exact=True).click()

        expect(page.get_by_text("DiffuPrompter finished")).to_be_visible(timeout=180_000)
        expect(page.get_by_text("dp_heatmap_ship").first).to_be_visible()
        page.wait_for_timeout(1000)
        page.screenshot(path=ARTIFACTS / "4-result.png")
        page.get_by_role("button", name="Close").click()
        expect(page.get_by_text("dp_instances").first).to_be_visible()
        page.wait_for_timeout(2000)
        page.screenshot(path=ARTIFACTS / "5-labels-in-grid.png")
        browser.close()

    image_dataset.reload()
    assert image_dataset.count("dp_instances") == 4
    assert image_dataset.get_brain_info("diffuprompter").config.settings["loops"] == 2
