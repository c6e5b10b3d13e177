"""The metrics exporter's CPU per scrape, against a running platform.

    .venv/bin/python -m benchmarks.scrape_cost --home /path/to/home [-n 50]

Scrapes /metrics through the proxy (TLS, the API login, Caddy, the exporter) N times and
reads the exporter's own CPU time (user + system, from /proc) before and after: the cost
per scrape, and what a 15 s scrape interval takes of one core. Not part of `make test`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import httpx
import psutil

from flowyard.client.api import auth_header
from flowyard.config.context import Context, load_context
from flowyard.platform.supervisor import Supervisor
from flowyard.services import caddy, metrics

INTERVAL = 15.0


def exporter_process(ctx: Context) -> psutil.Process:
    info = Supervisor(ctx.paths).info(metrics.NAME)
    return psutil.Process(info["pid"])


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def measure(ctx: Context, scrapes: int) -> dict[str, float]:
    proc = exporter_process(ctx)
    headers = auth_header(ctx.secrets.prefect_auth_string.get_secret_value())
    with httpx.Client(verify=caddy.tls_verify(ctx), headers=headers, timeout=30) as client:
        client.get(f"{ctx.config.proxy.url}/metrics").raise_for_status()  # warm
        before, started = cpu_seconds(proc), time.perf_counter()
        for _ in range(scrapes):
            client.get(f"{ctx.config.proxy.url}/metrics").raise_for_status()
        wall = time.perf_counter() - started
        used = cpu_seconds(proc) - before
    per_scrape = used / scrapes
    return {
        "scrapes": scrapes,
        "cpu_seconds_per_scrape": per_scrape,
        "wall_seconds_per_scrape": wall / scrapes,
        "core_share_at_15s": per_scrape / INTERVAL,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("-n", "--scrapes", type=int, default=50)
    args = parser.parse_args()
    result = measure(load_context(args.home), args.scrapes)
    cpu_ms = result["cpu_seconds_per_scrape"] * 1000
    wall_ms = result["wall_seconds_per_scrape"] * 1000
    print(
        f"{result['scrapes']:.0f} scrapes: exporter CPU {cpu_ms:.1f} ms per scrape "
        f"(wall {wall_ms:.0f} ms); every 15 s that is "
        f"{result['core_share_at_15s']:.3%} of one core"
    )


if __name__ == "__main__":
    main()
