"""What the access gate costs an API call (issue 14's goal: at most 2 ms at the median).

The same authenticated GET, three ways, interleaved request by request so a change in load
hits all alike:

- **gate**: the platform's own Caddy, whose `/api/*` asks the gate first (`forward_auth`), with
  a viewer's login;
- **no gate**: today's path before the gate: a second, bench-only Caddy rendered by the same
  renderer (`render_caddyfile`) from the same config, the gate's check taken out of its
  `/api/*` route, on loopback ports of its own, forwarding straight to the same Prefect API,
  which checks the credential itself (the internal one, as it checked the shared login
  before). Its own internal CA, under the scratch directory, and it is stopped at the end:
  nothing about the platform changes;
- **gate alone**: the gate's decision on its socket, as Caddy asks it (client included);
- **control**: a call neither Caddy sends to the gate (`/ui-settings`), through each, which
  shows how far the two Caddy processes differ by themselves (about 1.00x when fair);

and the gate alone once more served by uvicorn with the pure-Python loop and HTTP parser
(asyncio + h11), to show what uvloop + httptools (installed, picked by uvicorn's "auto")
save on the hop.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from benchmarks.harness import BenchEnv, say
from benchmarks.report import BenchResult, Figure
from benchmarks.stats import summarize
from flowyard.client.api import auth_header, internal_auth_string, local_http
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK, FlowyardConfig
from flowyard.config.users import add_user, remove_user
from flowyard.files import write_private
from flowyard.services import gate
from flowyard.services.base import binary, port_free
from flowyard.services.caddy import tls_verify
from flowyard.services.caddyfile import Upstreams, gate_check, render_caddyfile, unix
from flowyard.waiting import wait_until

GOAL_MS = 2.0
PATH = "/api/work_pools/default"
CONTROL = "/ui-settings"


@contextmanager
def _viewer(ctx: Context) -> Iterator[str]:
    """A viewer's login for the run, removed at the end."""
    path, admin = ctx.paths.users_file, ctx.secrets.prefect_auth_string.get_secret_value()
    name = f"bench-viewer-{uuid.uuid4().hex[:8]}"
    try:
        yield add_user(path, admin, name, "viewer")
    finally:
        remove_user(path, admin, name)


@contextmanager
def _process(command: list[str], env: dict[str, str], log: Path) -> Iterator[None]:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def no_gate_caddyfile(
    config: FlowyardConfig, up: Upstreams, ports: dict[str, int], here: Path
) -> tuple[FlowyardConfig, str]:
    """The platform's Caddyfile as the renderer makes it without a gate (today's path for
    /api/*), moved to loopback, its own ports, admin socket and log; the S3, MLflow and Dask
    sites left out (not measured). Returns the moved config too (its proxy URL)."""
    config = config.model_copy(update={"proxy": config.proxy.model_copy(update=ports)})
    up = replace(
        up,
        s3=None,
        mlflow=None,
        dask=None,
        dask_pki=None,
        listen=LOOPBACK,
        admin=unix(here / "admin.sock"),
        access_log=str(here / "access.log"),
    )
    # The product's renderer always puts the gate in front of /api/*; the bench alone takes
    # that one check out of the /api/* route (the other routes are not measured).
    text = render_caddyfile(config, up)
    check = "".join(f"{line}\n" for line in gate_check(up))
    head, sep, api = text.partition("\thandle /api/* {\n")
    if not sep or not api.startswith(check):
        raise RuntimeError("the rendered /api/* route does not start with the gate's check")
    return config, head + sep + api[len(check) :]


def api_route(caddyfile: str) -> str:
    """The `handle /api/* { ... }` block of a Caddyfile."""
    block = caddyfile.split("\thandle /api/* {\n", 1)[1]
    return block.split("\n\t}\n", 1)[0]


@contextmanager
def caddy_without_gate(ctx: Context, workdir: Path) -> Iterator[dict[str, Any]]:
    """httpx.Client options for the bench-only Caddy without the gate (see the docstring)."""
    free = (p for p in range(random.randint(22000, 31000), 32000) if port_free(p))
    ports = {k: next(free) for k in ("https_port", "http_port", "s3_https_port")}
    here = workdir / "caddy-no-gate"
    data = here / "data"
    data.mkdir(parents=True, exist_ok=True)
    config, text = no_gate_caddyfile(ctx.config, Upstreams.from_context(ctx), ports, here)
    caddyfile = here / "Caddyfile"
    write_private(caddyfile, text)
    env = {
        "PATH": os.environ["PATH"],
        "XDG_DATA_HOME": str(data),
        "XDG_CONFIG_HOME": str(data / "config"),
        "HOME": str(data),
    }
    command = [binary("caddy"), "run", "--config", str(caddyfile), "--adapter", "caddyfile"]
    root = data / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    with _process(command, env, here / "caddy.log"):
        options: dict[str, Any] = {
            "base_url": config.proxy.url,
            "headers": auth_header(internal_auth_string(ctx)),
        }

        def ready() -> bool:
            if config.proxy.tls == "internal":
                if not root.exists():
                    return False
                options["verify"] = str(root)
            try:
                with httpx.Client(**options, timeout=3) as c:
                    return c.get(PATH).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(ready, timeout=60):
            raise RuntimeError(f"the bench-only Caddy did not answer; see {here / 'caddy.log'}")
        yield options


@contextmanager
def gate_without_uvloop(ctx: Context, workdir: Path) -> Iterator[Path]:
    """A second gate on a bench socket, uvicorn forced to asyncio + h11."""
    sock = workdir / "gate-asyncio.sock"
    svc = gate.service(ctx)
    command = [str(sock) if a == str(ctx.paths.socket(gate.NAME)) else a for a in svc.command]
    command += ["--loop", "asyncio", "--http", "h11"]
    env = {**os.environ, **svc.env}
    with _process(command, env, workdir / "gate-asyncio.log"):
        if not wait_until(lambda: gate.answers(sock), timeout=60):
            raise RuntimeError(
                f"the bench-only gate did not answer; see {workdir}/gate-asyncio.log"
            )
        yield sock


def _gate_request(login: str) -> dict[str, str]:
    return {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": PATH, **auth_header(login)}


def measure(ctx: Context, workdir: Path, count: int) -> dict[str, list[float]]:
    """Seconds per request by path, the paths' order rotating every round."""
    with ExitStack() as stack:
        login = stack.enter_context(_viewer(ctx))
        no_gate = stack.enter_context(caddy_without_gate(ctx, workdir))
        slow_gate = stack.enter_context(gate_without_uvloop(ctx, workdir))
        with_gate: dict[str, Any] = {
            "base_url": ctx.config.proxy.url,
            "headers": auth_header(login),
        }
        gated = stack.enter_context(httpx.Client(**with_gate, verify=tls_verify(ctx)))
        ungated = stack.enter_context(httpx.Client(**no_gate))
        gate_sock = stack.enter_context(local_http(ctx.paths.socket(gate.NAME)))
        slow_sock = stack.enter_context(local_http(slow_gate))
        check = _gate_request(login)
        # name: (client, request); the two control calls reach Prefect without the gate on
        # both Caddys (the UI's settings), so they show what two Caddy processes differ by.
        calls: dict[str, tuple[httpx.Client, Callable[[httpx.Client], httpx.Response]]] = {
            "gate": (gated, lambda c: c.get(PATH)),
            "no gate": (ungated, lambda c: c.get(PATH)),
            "control: platform's Caddy": (gated, lambda c: c.get(CONTROL)),
            "control: bench Caddy": (ungated, lambda c: c.get(CONTROL)),
            "gate alone": (gate_sock, lambda c: c.get("http://gate/check", headers=check)),
            "gate alone, asyncio+h11": (
                slow_sock,
                lambda c: c.get("http://gate/check", headers=check),
            ),
        }
        for client, call in calls.values():  # connect, TLS handshake, the gate's login cache
            for _ in range(5):
                call(client).raise_for_status()
        samples: dict[str, list[float]] = {name: [] for name in calls}
        names = list(calls)
        for i in range(count):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                client, call = calls[name]
                t = time.perf_counter()
                r = call(client)
                samples[name].append(time.perf_counter() - t)
                r.raise_for_status()
    return samples


def figures(samples: dict[str, list[float]]) -> tuple[list[Figure], str]:
    """The rows and the goal's note from `measure`'s seconds."""
    s = {name: summarize(v) for name, v in samples.items()}
    ms = {name: {q: s[name][q] * 1000 for q in ("p50", "p95")} for name in s}
    n = int(s["gate"]["n"])
    rows = [
        Figure(
            f"GET {PATH} through Caddy, with vs without the gate, {q}",
            "ms",
            ms["gate"][q],
            ms["no gate"][q],
            n=n,
        )
        for q in ("p50", "p95")
    ]
    added = ms["gate"]["p50"] - ms["no gate"]["p50"]
    rows += [
        # Against the goal itself: a ratio up to 1.00x meets it.
        Figure(
            f"the gate's added p50 (with - without) vs the {GOAL_MS:g} ms goal",
            "ms",
            added,
            GOAL_MS,
            n=n,
        ),
        Figure(
            f"control: GET {CONTROL} (no gate on either), platform's vs bench Caddy, p50",
            "ms",
            ms["control: platform's Caddy"]["p50"],
            ms["control: bench Caddy"]["p50"],
            n=n,
        ),
        Figure(
            "the gate's decision on its socket, uvloop+httptools vs asyncio+h11, p50",
            "ms",
            ms["gate alone"]["p50"],
            ms["gate alone, asyncio+h11"]["p50"],
            n=n,
        ),
    ]
    note = (
        f"goal (issue 14): the gate adds <= {GOAL_MS:g} ms p50 to an API call "
        f"({added:+.2f} ms here: {'met' if added <= GOAL_MS else 'NOT met'}); the gate's own "
        f"decision on its socket: {ms['gate alone']['p50']:.2f} ms p50"
    )
    return rows, note


def run(env: BenchEnv, res: BenchResult) -> None:
    ctx, count = env.platform, env.plan.api_requests
    say(f"api: the gate's cost, {count} GET {PATH} per path (with, without, the gate alone)")
    samples = measure(ctx, env.workdir, count)
    res.details["gate_cost_s"] = samples
    rows, note = figures(samples)
    res.add(*rows)
    res.notes.append(note)
