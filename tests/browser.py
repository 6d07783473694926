"""Headless Chromium for the tests that look at a page as a user's browser draws it (the
comparison report, the manual)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def render(url: str, screenshot: Path, window: tuple[int, int]) -> str:
    """Draw ``url`` in headless Chromium: return its DOM after the scripts ran and save a
    screenshot of ``window`` (width, height) pixels, failing if Chromium fails or the page logs
    an uncaught error or any console message."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "this test needs Chromium (make test installs it)"
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={window[0]},{window[1]}",
    ]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run(
        [*flags, "--enable-logging=stderr", "--v=0", f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    assert "Uncaught" not in shot.stderr and ":CONSOLE(" not in shot.stderr, shot.stderr[-2000:]
    return dom.stdout
