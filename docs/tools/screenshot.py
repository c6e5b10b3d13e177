"""Screenshot a Flowyard page in headless Chromium, logged in, TLS verified against the CA.

Usage: python docs/tools/screenshot.py PATH OUT.png [--home DIR] [--width 1600 --height 1000]
Needs Debian's chromium. Prefect's UI keeps its login in localStorage (`prefect-password`,
base64 of the auth string), so the script sets it through the DevTools protocol and reloads.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import tempfile
import time
import urllib.request
from itertools import count

from websockets.sync.client import connect

from flowyard.platform import lifecycle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("out")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    args = parser.parse_args()
    ctx = lifecycle.load_context()
    url = ctx.config.proxy.url + args.path
    auth = ctx.secrets.prefect_auth_string.get_secret_value()
    profile = tempfile.mkdtemp(prefix="flowyard-shot-")
    # Chromium trusts the platform CA through an NSS db in its profile, not through a flag
    # that turns verification off.
    nss = f"{profile}/.pki/nssdb"
    subprocess.run(["mkdir", "-p", nss], check=True)
    subprocess.run(["certutil", "-d", f"sql:{nss}", "-N", "--empty-password"], check=True)
    subprocess.run(
        [
            "certutil",
            "-d",
            f"sql:{nss}",
            "-A",
            "-t",
            "C,,",
            "-n",
            "flowyard",
            "-i",
            str(ctx.paths.ca_cert),
        ],
        check=True,
    )
    port = 9333 + int(time.time()) % 1000
    chrome = subprocess.Popen(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={port}",
            f"--window-size={args.width},{args.height}",
            "about:blank",
        ],
        env={"HOME": profile, "PATH": "/usr/bin:/bin"},
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                break
            except OSError:
                time.sleep(0.1)
        page = next(t for t in targets if t["type"] == "page")
        ids = count(1)
        with connect(page["webSocketDebuggerUrl"], max_size=None) as ws:

            def call(method: str, **params: object) -> dict:
                msg_id = next(ids)
                ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                while True:
                    reply = json.loads(ws.recv())
                    if reply.get("id") == msg_id:
                        return reply.get("result", {})

            call("Page.enable")
            call("Page.navigate", url=ctx.config.proxy.url + "/api/health")
            time.sleep(1)
            token = base64.b64encode(auth.encode()).decode()
            call(
                "Runtime.evaluate", expression=f"localStorage.setItem('prefect-password','{token}')"
            )
            call("Page.navigate", url=url)
            time.sleep(8)
            shot = call("Page.captureScreenshot", format="png")
        with open(args.out, "wb") as fh:
            fh.write(base64.b64decode(shot["data"]))
    finally:
        chrome.kill()
        chrome.wait()


if __name__ == "__main__":
    main()
