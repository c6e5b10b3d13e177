"""S3 PUT/GET throughput: the platform's path (Caddy's S3 HTTPS port, CA verified) vs
boto3 straight to SeaweedFS on loopback, for 1 MiB and 64 MiB objects.

Same boto3 settings on both paths; operations alternate between the paths (ABAB, BABA)
so load drift weighs on both; connections are warmed up first so a TLS handshake is not
billed to the first object. Objects are random bytes (nothing compresses them) and are
deleted afterwards.
"""

from __future__ import annotations

import os
import time
from typing import Any

import boto3
from botocore.config import Config

from benchmarks.harness import BenchEnv, say
from benchmarks.report import BenchResult, Figure
from benchmarks.stats import summarize
from flowyard.config.context import Context
from flowyard.config.model import LOOPBACK

MiB = 2**20
PATHS = ("direct", "proxy")


def clients(ctx: Context) -> dict[str, Any]:
    store = ctx.config.object_store
    common: dict[str, Any] = {
        "aws_access_key_id": ctx.secrets.s3_access_key.get_secret_value(),
        "aws_secret_access_key": ctx.secrets.s3_secret_key.get_secret_value(),
        "region_name": store.region,
        "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    }
    proxy_verify: str | bool = (
        str(ctx.paths.ca_cert) if ctx.config.proxy.tls == "internal" else True
    )
    return {
        "direct": boto3.client("s3", endpoint_url=f"http://{LOOPBACK}:{store.s3_port}", **common),
        "proxy": boto3.client(
            "s3", endpoint_url=ctx.config.proxy.s3_url, verify=proxy_verify, **common
        ),
    }


def _order(i: int) -> tuple[str, str]:
    return PATHS if i % 2 == 0 else (PATHS[1], PATHS[0])


def measure_size(
    s3: dict[str, Any], bucket: str, payload: bytes, count: int, env: BenchEnv
) -> dict[str, dict[str, list[float]]]:
    """Seconds per PUT and per GET of `payload`, by path."""
    label = f"{len(payload) // MiB}MiB"
    times: dict[str, dict[str, list[float]]] = {op: {p: [] for p in PATHS} for op in ("put", "get")}
    keys = {p: [f"bench/{p}/{label}/{i}" for i in range(count)] for p in PATHS}
    try:
        for i in range(count):
            for path in _order(i):
                t = time.perf_counter()
                s3[path].put_object(Bucket=bucket, Key=keys[path][i], Body=payload)
                times["put"][path].append(time.perf_counter() - t)
            if env.deadline.passed:
                break
        for i in range(len(times["put"]["proxy"])):
            for path in _order(i):
                t = time.perf_counter()
                body = s3[path].get_object(Bucket=bucket, Key=keys[path][i])["Body"].read()
                times["get"][path].append(time.perf_counter() - t)
                if len(body) != len(payload):
                    raise RuntimeError(f"GET {keys[path][i]} returned {len(body)} bytes")
            if env.deadline.passed:
                break
    finally:
        for path in PATHS:
            for key in keys[path]:
                s3["direct"].delete_object(Bucket=bucket, Key=key)
    return times


def run(env: BenchEnv, res: BenchResult) -> None:
    ctx, plan = env.platform, env.plan
    if ctx.config.object_store.kind != "seaweedfs":
        res.status = "skipped"
        res.notes.append("external object store: no platform path to compare")
        return
    res.candidate = f"platform path: Caddy {ctx.config.proxy.s3_url} (TLS, internal CA)"
    res.reference = f"boto3 direct to SeaweedFS on {LOOPBACK}:{ctx.config.object_store.s3_port}"
    s3, bucket = clients(ctx), ctx.config.object_store.results_bucket
    for path in PATHS:  # connect, TLS handshake, credentials, endpoint resolution
        s3[path].put_object(Bucket=bucket, Key=f"bench/warmup-{path}", Body=b"x")
        s3[path].get_object(Bucket=bucket, Key=f"bench/warmup-{path}")["Body"].read()
        s3[path].delete_object(Bucket=bucket, Key=f"bench/warmup-{path}")
    for size_mib, count in ((1, plan.s3_small_count), (64, plan.s3_large_count)):
        say(f"s3: {count} PUT + GET of {size_mib} MiB per path")
        payload = os.urandom(size_mib * MiB)
        times = measure_size(s3, bucket, payload, count, env)
        res.details[f"{size_mib}MiB"] = {
            op: {p: summarize(v) for p, v in by_path.items()} for op, by_path in times.items()
        }
        for op in ("put", "get"):
            mibps = {p: (len(v) * size_mib / sum(v)) if v else None for p, v in times[op].items()}
            res.add(
                Figure(
                    f"{op.upper()} {size_mib} MiB",
                    "MiB/s",
                    mibps["proxy"],
                    mibps["direct"],
                    "higher",
                    n=len(times[op]["proxy"]),
                )
            )
        if len(times["get"]["proxy"]) < count:
            res.status = "partial"
            res.notes.append(f"{size_mib} MiB: stopped at the phase deadline")
