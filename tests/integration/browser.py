"""A real headless Chromium on the platform's UI, for the UI tests.

Debian's `chromium` package driven by Playwright's client (`executable_path`): Playwright's
own browser builds are downloaded from outside PyPI, which CI cannot reach, so `make test`
installs Debian's (deploy/ci/chromium.sh). Without it the UI test skips on a developer's
machine and fails under CI (CI=true), so it cannot silently drop out of CI.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from playwright.sync_api import Browser, Page, sync_playwright

from flowyard.config.context import Context

# Generous: the platform shares 2 CPUs with the test, and the UI is a large single-page app.
TIMEOUT_MS = 60_000


def chromium_path() -> str:
    """Debian's chromium, or a skip (a failure under CI, which must run this test)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    message = (
        "chromium is not installed: the UI test drives Debian's chromium package "
        "(`make test` installs it as root: deploy/ci/chromium.sh; or apt-get install -y chromium)"
    )
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def spki_pin(ctx: Context) -> str:
    """The base64 SHA-256 of the key the platform's HTTPS origin serves, read over a TLS
    connection verified against the platform CA (and the host name) here, in Python."""
    url = urlsplit(ctx.config.proxy.url)
    host, port = url.hostname or "localhost", url.port or 443
    tls = ssl.create_default_context(cafile=str(ctx.paths.ca_cert))
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        tls.wrap_socket(raw, server_hostname=host) as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der, "the platform's HTTPS origin sent no certificate"
    spki = (
        x509.load_der_x509_certificate(der)
        .public_key()
        .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@contextmanager
def chromium(ctx: Context) -> Iterator[Browser]:
    """Headless Chromium that trusts exactly the platform's HTTPS key.

    Chromium is not given the platform CA; it is told to accept the one public key that
    `spki_pin` read through a CA-verified connection (--ignore-certificate-errors-spki-list).
    That pins this origin's key rather than turning verification off (which
    --ignore-certificate-errors would do for every host and key), and needs no NSS database
    (certutil) written for a throw-away profile."""
    args = [f"--ignore-certificate-errors-spki-list={spki_pin(ctx)}"]
    if os.geteuid() == 0:
        # Chromium refuses to start as root with its sandbox on (CI runs as root): its
        # setuid/namespace sandbox is built to confine an unprivileged user, and root could
        # undo it anyway. It only ever loads this test platform's own pages.
        args.append("--no-sandbox")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=args)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, origin: str, login: str) -> None:
    """Log in through Prefect's login page as a person does: the whole `NAME:KEY` login in
    its one password box (Prefect's UI sends it as basic auth on every API call)."""
    page.goto(origin + "/runs")
    box = page.locator("input[type=password]")
    box.wait_for(timeout=TIMEOUT_MS)
    box.fill(login)
    box.press("Enter")
    box.wait_for(state="detached", timeout=TIMEOUT_MS)


def screenshot(page: Page, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    try:
        page.screenshot(path=str(path), full_page=True)
    except Exception as exc:  # a failing test's evidence must not hide its own error
        path.with_suffix(".txt").write_text(f"no screenshot: {exc!r}\n")
    return path
