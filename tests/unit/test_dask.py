"""The Dask cluster's configuration, certificates and rendered files (no process started)."""

from __future__ import annotations

import inspect
import json
import logging
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from flowyard.client.env import (
    DASK_TLS_KEYS,
    DASK_WORKER_ENV,
    platform_client_env,
    worker_client_env,
)
from flowyard.client.joinfile import JoinInfo
from flowyard.config.context import Context
from flowyard.config.load import load_config
from flowyard.config.secrets import Secrets
from flowyard.services import catalog
from flowyard.services import dask as dask_service
from flowyard.services.base import binary
from flowyard.services.caddyfile import Upstreams, render_caddyfile

FAKE_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def platform(tmp_path: Path, enabled: bool = True, **dask: object) -> Context:
    home = tmp_path / "server"
    home.mkdir(exist_ok=True)
    config = load_config(home, require_file=False)
    config = config.model_validate(
        {**config.model_dump(), "dask": {**config.dask.model_dump(), "enabled": enabled, **dask}}
    )
    ctx = Context(config=config, secrets=Secrets.generate())
    ctx.paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    ctx.paths.ca_cert.write_text(FAKE_CA)
    return ctx


def test_off_by_default_and_its_ports_checked_when_on(tmp_path: Path) -> None:
    off = load_config(tmp_path, require_file=False)
    assert off.dask.enabled is False
    assert not any(k.startswith("dask.") for k in off.port_settings())
    on = platform(tmp_path, workers=3).config
    ports = on.port_settings()
    assert ports["dask.https_port"] == 8786
    assert [ports[f"dask.worker_port + {i}"] for i in range(3)] == [18787, 18788, 18789]
    with pytest.raises(ValueError, match=r"dask\.worker_port \+ 1 and"):
        platform(tmp_path, workers=2, https_port=18788)


def test_no_dask_setting_or_service_when_off(tmp_path: Path) -> None:
    ctx = platform(tmp_path, enabled=False)
    assert not any(k.startswith("DASK_") for k in platform_client_env(ctx))
    assert not any(s.name.startswith("dask") for s in catalog.services(ctx))
    assert ":8786" not in render_caddyfile(ctx.config, Upstreams.from_context(ctx))


def test_services_order_and_commands_keep_every_port_on_loopback_and_tls(tmp_path: Path) -> None:
    ctx = platform(tmp_path, workers=2, threads=3, memory_limit="2GiB")
    names = [s.name for s in catalog.services(ctx)]
    assert names.index("dask-scheduler") < names.index("caddy")
    assert names.index("caddy") < names.index("dask-worker-0") < names.index("dask-worker-1")
    scheduler = next(s for s in catalog.services(ctx) if s.name == "dask-scheduler")
    argv = scheduler.command
    port = str(ctx.config.dask.scheduler_port)
    assert argv[argv.index("--protocol") + 1] == "wss"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    # The HTTP routes share the comm port, so they sit behind the same certificate check.
    assert argv[argv.index("--dashboard-address") + 1] == f"127.0.0.1:{port}"
    # The comm fixes without Prefect (flowyard.dask_comms, a leaf that imports no Prefect).
    assert argv[argv.index("--preload") + 1] == "flowyard.dask_comms"
    for env in (scheduler.env, dask_service.worker_env(ctx)):
        assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
        assert env[DASK_TLS_KEYS["ca_file"]] == str(dask_service.data(ctx) / "ca.crt")
    worker = dask_service.worker_command(ctx, 1)
    assert worker[worker.index("--listen-address") + 1] == "wss://127.0.0.1:18788"
    assert worker[worker.index("--nthreads") + 1] == "3"
    assert worker[worker.index("--memory-limit") + 1] == "2GiB"
    assert (
        "--no-nanny" in worker and worker[worker.index("--preload") + 1] == "flowyard.dask_cluster"
    )
    # Tasks call Prefect's API like flow runs: the worker profile, minus the proxy address.
    wenv = dask_service.worker_env(ctx)
    assert wenv["PREFECT_API_URL"] == worker_client_env(ctx)["PREFECT_API_URL"]
    assert "DASK_SCHEDULER_ADDRESS" not in wenv
    # Tasks' INFO logs go to the API only (DASK_WORKER_ENV): Prefect's env override of its
    # logging.yml turns the console handler's level up.
    assert wenv["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] == "WARNING"
    probe = (
        "import logging; from prefect.logging.configuration import setup_logging; "
        "setup_logging(); print([h.level for n in ('prefect', None) "
        "for h in logging.getLogger(n).handlers if type(h).__name__ == 'PrefectConsoleHandler'])"
    )
    level = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **DASK_WORKER_ENV},
        capture_output=True,
        text=True,
        check=True,
    )
    assert level.stdout.split("\n")[-2] == f"[{logging.WARNING}]"


def test_client_env_points_a_plain_client_at_the_proxy(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    env = platform_client_env(ctx)
    assert env["DASK_SCHEDULER_ADDRESS"] == "wss://localhost:8786"
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert env[DASK_TLS_KEYS["ca_file"]] == str(ctx.paths.ca_cert)
    assert env[DASK_TLS_KEYS["client_cert"]] == str(ctx.paths.dask_pki / "client.crt")
    # Flow runs of the local worker use the copy their account can read.
    wenv = worker_client_env(ctx)
    assert wenv[DASK_TLS_KEYS["client_key"]] == str(dask_service.data(ctx) / "client.key")


def test_pki_is_owner_only_signed_by_its_ca_and_kept(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    dask_service.ensure_pki(ctx)
    pki = ctx.paths.dask_pki
    assert stat.S_IMODE(pki.stat().st_mode) == 0o700
    for name in ("ca.crt", "ca.key", "node.crt", "node.key", "client.crt", "client.key"):
        assert stat.S_IMODE((pki / name).stat().st_mode) == 0o600, name
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    for name in ("node.crt", "client.crt"):
        cert = x509.load_pem_x509_certificate((pki / name).read_bytes())
        cert.verify_directly_issued_by(ca)
    # A TLS context loads them as Dask's Security would.
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    dask_service.ensure_pki(ctx)
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before
    # A new CA (the old one lost): every certificate is reissued under it.
    (pki / "ca.key").unlink()
    dask_service.ensure_pki(ctx)
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    x509.load_pem_x509_certificate((pki / "client.crt").read_bytes()).verify_directly_issued_by(ca)


def test_caddy_requires_a_client_certificate_and_adapts(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    text = render_caddyfile(ctx.config, Upstreams.from_context(ctx))
    site = text[text.index("https://localhost:8786 {") :]
    site = site[: site.index("\n}\n")]
    assert "mode require_and_verify" in site
    assert f"trust_pool file {ctx.paths.dask_pki}/ca.crt" in site
    assert f"reverse_proxy https://127.0.0.1:{ctx.config.dask.scheduler_port}" in site
    assert "tls_client_auth" in site and "respond" in site
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    out = subprocess.run(
        [binary("caddy"), "adapt", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        check=True,
    )
    servers = json.loads(out.stdout)["apps"]["http"]["servers"]
    dask = next(s for s in servers.values() if s["listen"] == ["127.0.0.1:8786"])
    policies = dask["tls_connection_policies"]
    # Connections without a server name (clients of an IP address) get the client_auth policy.
    assert any(
        "" in p.get("match", {}).get("sni", [])
        and p["client_authentication"]["mode"] == "require_and_verify"
        for p in policies
    )


def test_join_file_carries_the_credential_owner_only_with_both_cas(tmp_path: Path) -> None:
    from flowyard.platform.join import join_info

    ctx = platform(tmp_path)
    dask_service.ensure_pki(ctx)
    dask_service.copy_credentials(ctx)
    path = tmp_path / "join.toml"
    join_info(ctx, ctx.config.worker.pool).write(path)
    remote = tmp_path / "remote"
    remote.mkdir()
    profile = JoinInfo.read(path).profile(remote, "https://platform.lan:8443")
    assert profile.dask is not None
    assert profile.dask.address == "wss://platform.lan:8786"
    for f in (profile.dask.cert_file, profile.dask.key_file, profile.dask.ca_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    bundle = profile.dask.ca_file.read_text()
    # The proxy's CA and the Dask CA: the worker verifies both the proxy and its peers.
    assert FAKE_CA.strip() in bundle
    assert (ctx.paths.dask_pki / "ca.crt").read_text().strip() in bundle
    assert profile.dask.key_file.read_text() == (ctx.paths.dask_pki / "client.key").read_text()


def test_task_runner_needs_the_platform_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowyard.dask_cluster import NoClusterError, task_runner

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    runner = task_runner()
    with pytest.raises(NoClusterError, match=r"dask\.enabled"):
        runner.__enter__()
    assert task_runner().duplicate().__class__ is runner.__class__


def test_containers_run_no_dask_cluster(tmp_path: Path) -> None:
    from dataclasses import replace

    ctx = platform(tmp_path)
    containers = replace(ctx, hosts=replace(ctx.hosts, use_sockets=False))
    assert not any(s.name.startswith("dask") for s in catalog.services(containers))
    assert Upstreams.from_context(containers).dask is None


def test_the_cluster_starts_in_the_graph_before_the_proxy_and_its_workers_after(
    tmp_path: Path,
) -> None:
    from flowyard.platform.registry import build_services
    from flowyard.platform.startup import check_order

    services = build_services(platform(tmp_path, workers=2))
    check_order(services)  # raises if an edge points at a later service
    by_name = {s.name: s for s in services}
    assert dask_service.SCHEDULER in by_name["caddy"].after
    workers = [s for s in services if s.name.startswith(dask_service.WORKER)]
    needs = {dask_service.SCHEDULER, "caddy"}
    assert len(workers) == 2 and all(needs <= set(w.after) for w in workers)


def test_prefect_context_caches_answer_as_prefect_does() -> None:
    """What `flowyard.dask_cluster` caches for every task sent to Dask equals what Prefect
    computes, and is reused (so the cache can be seen to work)."""
    import prefect.context as prefect_context
    from prefect import task_engine
    from prefect.blocks.core import Block
    from prefect.settings import Settings
    from prefect.utilities.dispatch import get_registry_for_type
    from prefect_aws import AwsCredentials, S3Bucket

    from flowyard import dask_cluster

    originals = dask_cluster.PREFECT_ORIGINALS
    assert task_engine.hydrated_context is not originals["hydrated_context"]

    # Which fields hold secrets: the same answer for every field of every block type.
    blocks = {cls for cls in (get_registry_for_type(Block) or {}).values()}
    assert {S3Bucket, AwsCredentials} <= blocks
    checked = 0
    for cls in blocks:
        block = cls.model_construct()
        for field in cls.model_fields:
            ours = block._field_has_secrets(field)
            assert ours == originals["Block._field_has_secrets"](block, field), (cls, field)
            checked += ours
    assert checked, "no block field holds a secret: the comparison proved nothing"

    # The settings context serialized once, and equal to Prefect's serialization.
    current = prefect_context.SettingsContext.get()
    assert current is not None
    first = current.serialize()
    assert current.serialize() is first
    assert first == originals["SettingsContext.serialize"](current)
    assert current.serialize(include_secrets=False) == originals["SettingsContext.serialize"](
        current, include_secrets=False
    )

    # A worker's task: the settings built once per serialized dict, equal to Prefect's build.
    # (A client given: without one, Prefect would start a temporary server of its own.)
    client: Any = object()

    def hydrated(context: dict[str, object]) -> Settings:
        with task_engine.hydrated_context(context, client):
            got = prefect_context.SettingsContext.get()
            assert got is not None
            return got.settings

    context = prefect_context.serialize_context()
    a, b = hydrated(context), hydrated(context)
    assert a is b
    with originals["hydrated_context"](context, client):
        reference = prefect_context.SettingsContext.get()
        assert reference is not None and reference.settings is not a
        assert reference.settings.model_dump() == a.model_dump()
    other = json.loads(json.dumps(context["settings_context"], default=str))
    other["settings"].setdefault("logging", {})["level"] = "DEBUG"
    changed = hydrated({**context, "settings_context": other})
    assert changed is not a and changed.logging.level == "DEBUG"


def _nodelay_of_a_connection(connect: Any) -> int:
    """TCP_NODELAY on the connecting side of a real `ws://` comm on loopback, opened with
    `connect` (a `WSConnector.connect`)."""
    import asyncio
    import socket

    from distributed.comm import listen
    from distributed.comm.ws import WSConnector

    async def main() -> int:
        async def handler(comm: Any) -> None:
            await comm.read()

        listener = listen("ws://127.0.0.1:0", handler)
        await listener.start()
        try:
            address = listener.contact_address.removeprefix("ws://")
            comm = await connect(WSConnector(), address)
            try:
                sock = comm.sock.stream.socket
                return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            finally:
                await comm.close()
        finally:
            listener.stop()

    return asyncio.run(main())


def test_dask_websocket_comms_send_without_nagles_delay() -> None:
    """distributed's connecting side of a websocket comm leaves Nagle's algorithm on (its
    accepting side turns it off), which costs every request-reply a delayed ACK (~40 ms);
    flowyard.dask_comms turns it off. When this test's first assertion fails, distributed
    does it itself: delete `_connect_websockets_without_nagle`."""
    from distributed.comm.ws import WSConnector

    from flowyard import dask_comms

    assert _nodelay_of_a_connection(dask_comms.ORIGINALS["WSConnector.connect"]) == 0
    assert _nodelay_of_a_connection(WSConnector.connect) == 1


def test_api_clients_on_a_dask_worker_share_one_verified_tls_context(tmp_path: Path) -> None:
    """Each task makes new sync Prefect clients; with flowyard.dask_cluster imported they
    share one SSLContext per CA file, set up as Prefect sets up its own (verification on, the
    same CAs), and a changed CA file gets a new one."""
    import shutil

    import certifi
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_SSL_CERT_FILE, temporary_settings

    from flowyard import dask_cluster

    def tls(client: SyncPrefectClient) -> ssl.SSLContext:
        context: ssl.SSLContext = client._client._transport._pool._ssl_context  # type: ignore[attr-defined]
        return context

    ca = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), ca)
    url = "https://localhost:9/api"
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(ca)}):
        a, b = SyncPrefectClient(url), SyncPrefectClient(url)
        assert tls(a) is tls(b)
        prefects = SyncPrefectClient.__new__(SyncPrefectClient)
        dask_cluster.PREFECT_ORIGINALS["SyncPrefectClient.__init__"](prefects, url)
        ours, reference = tls(a), tls(prefects)
        assert ours is not reference
        assert ours.verify_mode == reference.verify_mode == ssl.CERT_REQUIRED
        assert ours.check_hostname and reference.check_hostname
        assert ours.get_ca_certs() == reference.get_ca_certs() != []
        assert (ours.options, ours.minimum_version) == (
            reference.options,
            reference.minimum_version,
        )
        ca.write_text(ca.read_text())  # rewritten (a rotated CA): a new context
        os.utime(ca, ns=(0, ca.stat().st_mtime_ns + 10**9))
        assert tls(SyncPrefectClient(url)) is not ours


def test_the_platform_runner_sends_a_task_as_prefect_dask_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`PlatformDaskTaskRunner.submit` gives Prefect's task engine the arguments
    prefect-dask's own `PrefectDaskClient.submit` gives it; only the envelope differs: a
    module-level function instead of a new closure, under a key named by the task run's id
    instead of one dask tokenizes from every argument."""
    from types import SimpleNamespace

    import distributed
    from prefect import task
    from prefect_dask.client import PrefectDaskClient

    from flowyard import dask_cluster

    @task
    def tiny(x: int) -> int:
        return x + 1

    sent: list[dict[str, Any]] = []

    def capture(_client: object, func: Any, *args: Any, **kwargs: Any) -> SimpleNamespace:
        assert not args
        sent.append({"func": func, **kwargs})
        return SimpleNamespace()

    options = inspect.signature(distributed.Client.submit).parameters
    monkeypatch.setattr(distributed.Client, "submit", capture)
    PrefectDaskClient.submit(
        PrefectDaskClient.__new__(PrefectDaskClient),
        tiny,
        parameters={"x": 1},
        wait_for=None,
        dependencies={"x": set()},
        return_type="state",
    )
    runner = dask_cluster.task_runner()
    runner._started, runner._client = True, object()  # type: ignore[assignment]
    future = runner.submit(tiny, {"x": 1}, dependencies={"x": set()})
    prefect_dask, ours = sent

    # What goes to the task's function: every keyword that is not one of distributed's own.
    engine = [{k: v for k, v in call.items() if k not in options} for call in sent]
    for call in engine:  # what names one task run differs between any two submits
        task_run_id = call.pop("task_run_id")
        assert call["context"]["asset_context"].pop("task_run_id") == str(task_run_id)
    assert engine[1] == engine[0] != {}
    # prefect-dask's options for distributed are distributed's defaults, which ours are.
    chosen = set(prefect_dask) & set(options) - {"func", "pure"}
    assert {k: prefect_dask[k] for k in chosen} == {k: options[k].default for k in chosen}
    assert prefect_dask["func"].__wrapped__ is tiny and prefect_dask["pure"]
    assert ours["func"] is dask_cluster.run_prefect_task
    assert (ours["key"], ours["pure"]) == (f"tiny-{ours['task_run_id'].hex}", False)
    assert future.task_run_id == ours["task_run_id"]
