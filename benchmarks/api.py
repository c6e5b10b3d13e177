"""API latency and throughput through Caddy (HTTPS, CA verified) vs straight to Prefect.

The same call, the same client (httpx, HTTP/1.1 keep-alive), the two paths interleaved
request by request, so a change in machine load hits both alike. `/api/health` shows the
proxy's fixed cost; `POST /api/flow_runs/filter` (50 runs) a real page the UI loads, where
Caddy also compresses the response (what browsers get). The concurrent phase is bounded
by both a request count and a time limit, in A-B-B-A rounds; note the Python client shares
the two CPUs with the server, so req/s is a floor, and the ratio is what to read.
Between the two phases, the access gate's own cost on an API call (benchmarks/gate_cost.py).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import httpx

from benchmarks import gate_cost
from benchmarks.harness import BenchEnv, say
from benchmarks.report import BenchResult, Figure
from benchmarks.stats import rate, summarize
from flowyard.client.api import api_client, auth_header, internal_auth_string, prefect_api_socket
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK

SEED_RUNS = 50
CALLS: dict[str, tuple[str, str, dict[str, Any] | None]] = {
    "GET /api/health": ("GET", "/api/health", None),
    "POST /api/flow_runs/filter": (
        "POST",
        "/api/flow_runs/filter",
        {"limit": SEED_RUNS, "sort": "EXPECTED_START_TIME_DESC"},
    ),
}


def client_options(ctx: Context) -> dict[str, dict[str, Any]]:
    """httpx.Client keyword arguments for each path."""
    # Through the proxy with the admin's login (the access gate checks it); on the socket
    # with the credential Prefect itself checks behind the gate.
    headers = auth_header(ctx.secrets.prefect_auth_string.get_secret_value())
    proxy: dict[str, Any] = {"base_url": ctx.config.proxy.url, "headers": headers}
    if ctx.config.proxy.tls == "internal":
        proxy["verify"] = ssl.create_default_context(cafile=str(ctx.paths.ca_cert))
    return {
        "proxy": proxy,
        # Prefect itself, on the owner-only socket Caddy forwards to.
        "direct": {
            "base_url": f"http://{LOOPBACK}:{ctx.config.prefect.port}",
            "headers": auth_header(internal_auth_string(ctx)),
            "uds": str(prefect_api_socket(ctx)),
        },
    }


def sync_options(opts: dict[str, Any]) -> dict[str, Any]:
    """`client_options` for httpx.Client: a Unix socket becomes its transport."""
    kwargs = {k: v for k, v in opts.items() if k != "uds"}
    if "uds" in opts:
        kwargs["transport"] = httpx.HTTPTransport(uds=opts["uds"])
    return kwargs


def seed_flow_runs(ctx: Context) -> int:
    """Make sure the filter call returns a full page of runs, whatever ran before."""
    with api_client(ctx) as client:
        have = client.post("/flow_runs/count", json={}).json()
        if have >= SEED_RUNS:
            return int(have)
        flow_id = client.post("/flows/", json={"name": "bench-api-seed"}).json()["id"]
        for _ in range(SEED_RUNS - have):
            client.post(
                "/flow_runs/",
                json={"flow_id": flow_id, "state": {"type": "COMPLETED", "name": "Completed"}},
            ).raise_for_status()
        return SEED_RUNS


def sequential(ctx: Context, count: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per request, by call and path, the paths alternating (ABAB, then BABA)."""
    opts = client_options(ctx)
    samples: dict[str, dict[str, list[float]]] = {c: {"direct": [], "proxy": []} for c in CALLS}
    with (
        httpx.Client(**sync_options(opts["direct"]), timeout=30) as direct,
        httpx.Client(**sync_options(opts["proxy"]), timeout=30) as proxy,
    ):
        clients = {"direct": direct, "proxy": proxy}
        for call, (method, path, body) in CALLS.items():
            for client in clients.values():  # connect, TLS handshake, first-call caches
                for _ in range(5):
                    client.request(method, path, json=body).raise_for_status()
            for i in range(count):
                order = ("direct", "proxy") if i % 2 == 0 else ("proxy", "direct")
                for name in order:
                    t = time.perf_counter()
                    r = clients[name].request(method, path, json=body)
                    samples[call][name].append(time.perf_counter() - t)
                    r.raise_for_status()
    return samples


async def _hammer(
    opts: dict[str, Any], call: str, concurrency: int, total: int, seconds: float
) -> dict[str, float]:
    method, path, body = CALLS[call]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    done = errors = 0
    uds = opts.get("uds")
    kwargs = {k: v for k, v in opts.items() if k != "uds"}
    if uds:
        kwargs["transport"] = httpx.AsyncHTTPTransport(uds=uds, limits=limits)
    async with httpx.AsyncClient(**kwargs, limits=limits, timeout=30) as client:
        await asyncio.gather(*(client.request(method, path, json=body) for _ in range(concurrency)))
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        started = 0

        async def worker() -> None:
            nonlocal done, errors, started
            while started < total and loop.time() < end:
                started += 1
                try:
                    r = await client.request(method, path, json=body)
                    done += 1 if r.status_code == 200 else 0
                    errors += 0 if r.status_code == 200 else 1
                except httpx.HTTPError:
                    errors += 1

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t
    return {"requests": done, "errors": errors, "seconds": elapsed}


def concurrent(ctx: Context, env: BenchEnv) -> dict[str, dict[str, dict[str, float]]]:
    plan, opts = env.plan, client_options(ctx)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for call in CALLS:
        totals = {p: {"requests": 0.0, "errors": 0.0, "seconds": 0.0} for p in opts}
        for path in ("direct", "proxy", "proxy", "direct"):
            r = asyncio.run(
                _hammer(
                    opts[path],
                    call,
                    plan.api_concurrency,
                    plan.api_concurrent_requests // 4,
                    plan.api_concurrent_seconds / 4,
                )
            )
            for k in totals[path]:
                totals[path][k] += r[k]
        for t in totals.values():
            t["req_per_s"] = rate(t["requests"], t["seconds"]) or 0.0
        out[call] = totals
    return out


def run(env: BenchEnv, res: BenchResult) -> None:
    ctx, plan = env.platform, env.plan
    res.candidate = f"through Caddy ({ctx.config.proxy.url}, TLS with the internal CA)"
    res.reference = f"direct to Prefect on its Unix socket {prefect_api_socket(ctx)} (plain HTTP)"
    res.details["flow_runs_in_db"] = seed_flow_runs(ctx)
    say(f"api: {plan.api_requests} sequential requests per call and path")
    samples = sequential(ctx, plan.api_requests)
    res.details["samples_s"] = samples
    for call, by_path in samples.items():
        proxy, direct = summarize(by_path["proxy"]), summarize(by_path["direct"])
        res.details.setdefault("summary_s", {})[call] = {"proxy": proxy, "direct": direct}
        for q in ("p50", "p95"):
            res.add(
                Figure(
                    f"{call} latency {q}",
                    "ms",
                    proxy[q] * 1000,
                    direct[q] * 1000,
                    "lower",
                    n=int(proxy["n"]),
                )
            )
    gate_cost.run(env, res)
    say(
        f"api: concurrent phase, {plan.api_concurrency} connections, at most "
        f"{plan.api_concurrent_requests} requests / {plan.api_concurrent_seconds:g} s per call"
    )
    conc = concurrent(ctx, env)
    res.details["concurrent"] = conc
    for call, totals in conc.items():
        res.add(
            Figure(
                f"{call} throughput, {plan.api_concurrency} connections",
                "req/s",
                totals["proxy"]["req_per_s"],
                totals["direct"]["req_per_s"],
                "higher",
                n=int(totals["proxy"]["requests"]),
            )
        )
        if totals["proxy"]["errors"] or totals["direct"]["errors"]:
            res.status = "partial"
            res.notes.append(f"{call}: errors proxy/direct {totals}")
