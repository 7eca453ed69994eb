"""Debian's Chromium under Playwright, for every browser test: one launcher, one
set of flags, one page size."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .docker_support import ROOT

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def chromium() -> Iterator:
    """A headless Debian Chromium. Playwright's sync API keeps an event loop in
    this thread; the ORM calls in test bodies are still plain synchronous code,
    so Django's async-safety check is off while the browser is open."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed (scripts/test installs it)")
    ARTIFACTS.mkdir(exist_ok=True)
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
            try:
                yield browser
            finally:
                browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@contextmanager
def new_page(height: int = 900, timeout_ms: int | None = None) -> Iterator:
    """A page 1280 wide in a fresh browser."""
    with chromium() as browser:
        page = browser.new_context(viewport={"width": 1280, "height": height}).new_page()
        if timeout_ms:
            page.set_default_timeout(timeout_ms)
        yield page
