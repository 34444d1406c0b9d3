"""Headless Chromium for browser tests: Debian's `chromium`, driven by Playwright.

No browser is downloaded: Playwright launches the system binary through `executable_path`.
When it is missing, the browser tests fail with how to install it: a skipped test checks nothing.

    async with chromium() as browser:
        page = await (await browser.new_context()).new_page()

`serve(app)` runs an aiohttp application on a real TCP port for the browser to reach.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import pytest
from aiohttp import web

if TYPE_CHECKING:
    from playwright.async_api import Browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
TIMEOUT_MS = 15_000  # page actions and expect() assertions: generous for slow CI machines
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update"]


def chromium_path() -> str | None:
    """The browser binary: $CHROMIUM_PATH, else /usr/bin/chromium, else `chromium` on PATH."""
    for candidate in (os.environ.get("CHROMIUM_PATH"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def require_chromium() -> str:
    path = chromium_path()
    if path is None:
        reason = ("Chromium not found (looked at $CHROMIUM_PATH, /usr/bin/chromium, PATH); "
                  "install it with: apt-get install chromium")
        pytest.fail(reason, pytrace=False)
    return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    path = require_chromium()
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, headless=True,
                                                   args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def serve(app: web.Application, host: str = "127.0.0.1", port: int = 0
                ) -> AsyncIterator[str]:
    """Run `app` on host:port (0: a free port); yield its base URL (no trailing slash)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def artifact(name: str) -> Path:
    """A path under test-artifacts/ (gitignored) for screenshots and traces."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def fixed(value: float, places: int) -> str:
    """A number as JavaScript's toFixed prints it: the exact binary value, a tie rounded up
    (Python's format rounds 4.625 to 4.62, a page to 4.63)."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP))
