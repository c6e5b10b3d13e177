"""Where the platform's defaults make Prefect behave differently from a stock
`prefect server start`: each difference in docs/differences.md is pinned here.

Only the public surface is used: `flowyard init` into a temporary FLOWYARD_HOME, then
`flowyard env --json` for the client settings and `flowyard render compose` for the server
settings (rendered by the same function as native mode's, which tests/unit/test_compose.py
checks). Prefect's own defaults are read in a child with no Prefect settings at all, so a
Prefect upgrade that changes one of them fails here and sends us back to the page.

The subflow-retries test runs plain Prefect against its throwaway local API
(prefect_test_harness), once stock and once with the platform's
PREFECT_RESULTS_PERSIST_BY_DEFAULT, as Prefect's own integration test
`integration-tests/test_flow_retries_with_subflows.py` does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect import Flow, flow, task
from prefect.filesystems import LocalFileSystem
from prefect.settings import (
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
    PREFECT_RESULTS_PERSIST_BY_DEFAULT,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from flowyard.config.model import DEFAULT_POOL_TYPE, WorkerConfig

FLOWYARD = str(Path(sys.executable).with_name("flowyard"))


def _clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without its Prefect, AWS, MLflow or Flowyard settings."""
    prefixes = ("PREFECT_", "AWS_", "MLFLOW_", "FLOWYARD_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)} | extra


def _flowyard(home: Path, *args: str) -> str:
    out = subprocess.run(
        [FLOWYARD, *args, "--home", str(home)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("home")
    _flowyard(home, "init")
    return home


@pytest.fixture(scope="module")
def client(home: Path) -> dict[str, str]:
    """What `eval "$(flowyard env)"` exports; the local and compose workers get the same."""
    values: dict[str, str] = json.loads(_flowyard(home, "env", "--json"))
    return values


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The settings of Prefect's API and background-services processes."""
    out = tmp_path_factory.mktemp("compose")
    _flowyard(home, "render", "compose", "--out", str(out))
    compose = yaml.safe_load((out / "docker-compose.dev_server.yml").read_text())
    values: dict[str, str] = compose["x-prefect-server-env"]
    return values


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Prefect 3.9's own defaults: no PREFECT_* variable, an empty profiles file."""
    prefect_home = tmp_path_factory.mktemp("prefect-home")
    code = """
import json
from prefect.settings import get_current_settings
from prefect_redis.messaging import RedisMessagingPublisherSettings
s = get_current_settings()
print(json.dumps({
    "publisher_batch": RedisMessagingPublisherSettings().batch_size,
    "persister_batch": s.server.services.event_persister.batch_size,
    "persist_by_default": s.results.persist_by_default,
    "default_storage_block": s.results.default_storage_block,
    "heartbeat_frequency": s.flows.heartbeat_frequency,
    "retry_extra_codes": sorted(s.client.retry_extra_codes),
    "client_csrf_support": s.client.csrf_support_enabled,
    "server_csrf_protection": s.server.api.csrf_protection_enabled,
    "auth_string": s.server.api.auth_string is not None,
    "analytics": s.server.analytics_enabled,
    "vacuum": sorted(s.server.services.db_vacuum.enabled),
    "vacuum_days": s.server.services.db_vacuum.retention_period.days,
    "migrate_on_start": s.server.database.migrate_on_start,
    "broker": s.server.events.messaging_broker,
}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_clean_env(
            PREFECT_HOME=str(prefect_home),
            PREFECT_PROFILES_PATH=str(prefect_home / "profiles.toml"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    values: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return values


# --- client settings: every flow run, the local and remote workers, `flowyard env` ----------


def test_results_are_persisted_by_default_to_the_s3_block(
    client: dict[str, str], stock: dict[str, Any]
) -> None:
    assert stock["persist_by_default"] is False and stock["default_storage_block"] is None
    assert client["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert client["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "s3-bucket/flowyard-results"


def test_flow_runs_beat_every_30_seconds_and_are_crashed_after_120_without(
    home: Path, client: dict[str, str], stock: dict[str, Any]
) -> None:
    assert stock["heartbeat_frequency"] == 180
    assert client["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
    config = tomllib.loads((home / "flowyard.toml").read_text())
    assert config["hygiene"]["zombie_heartbeat_seconds"] == 120


def test_clients_retry_500(client: dict[str, str], stock: dict[str, Any]) -> None:
    assert stock["retry_extra_codes"] == []
    assert client["PREFECT_CLIENT_RETRY_EXTRA_CODES"] == "500"


def test_csrf_off_on_both_sides(
    client: dict[str, str], server: dict[str, str], stock: dict[str, Any]
) -> None:
    # Stock: the server's protection is off too, but every client still asks for a token.
    assert stock["server_csrf_protection"] is False and stock["client_csrf_support"] is True
    assert server["PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED"] == "false"
    assert client["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] == "false"


def test_clients_are_pointed_at_the_platforms_s3_and_mlflow(client: dict[str, str]) -> None:
    # Every boto3 S3 call of a flow goes to the platform's store unless it names its own.
    assert client["AWS_ENDPOINT_URL_S3"] == "https://localhost:8444"
    assert client["AWS_CA_BUNDLE"].endswith("/ca/root.crt")
    assert client["MLFLOW_TRACKING_URI"] == "https://localhost:8443/mlflow"


# --- server settings -----------------------------------------------------------------------


def test_server_settings(server: dict[str, str], stock: dict[str, Any]) -> None:
    assert not stock["auth_string"]
    assert server["PREFECT_SERVER_API_AUTH_STRING"].startswith("${")  # required, from .env
    assert stock["analytics"] is True
    assert server["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert server["PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT"] == "false"
    # Stock vacuums events only; the platform also deletes finished flow runs after 90 days.
    assert stock["vacuum"] == ["events"] and stock["vacuum_days"] == 90
    assert server["PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED"] == "events,flow_runs"
    assert server["PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD"] == str(90 * 86400)
    assert stock["migrate_on_start"] is True
    assert server["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] == "false"
    assert stock["broker"] == "prefect.server.utilities.messaging.memory"
    assert server["PREFECT_MESSAGING_BROKER"] == "prefect_redis.messaging"
    # Events a client sent are published as they arrive, not held for a batch.
    assert stock["publisher_batch"] == 5
    assert server["PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE"] == "1"
    # Events the services took from Redis are written before they are acknowledged.
    assert stock["persister_batch"] == 20
    assert server["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"] == "1"


def test_the_event_publisher_reads_its_batch_size_from_the_platforms_setting(
    server: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect_redis.messaging import Publisher

    name = "PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE"
    monkeypatch.setenv(name, server[name])
    assert Publisher("events", cache=None).batch_size == 1


def test_the_event_persister_reads_its_batch_size_from_the_platforms_setting(
    server: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import Settings

    name = "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"
    monkeypatch.setenv(name, server[name])
    assert Settings().server.services.event_persister.batch_size == 1


# --- worker --------------------------------------------------------------------------------


def test_default_pool_is_the_flowyard_worker_type_with_one_run_per_cpu(home: Path) -> None:
    config = tomllib.loads((home / "flowyard.toml").read_text())
    assert [p["name"] for p in config["pools"]] == ["default"]
    assert "type" not in config["pools"][0]  # unset: a new pool gets DEFAULT_POOL_TYPE
    assert DEFAULT_POOL_TYPE == "flowyard"
    assert "concurrency" not in config["worker"]
    assert WorkerConfig().effective_concurrency == (os.cpu_count() or 1)


# --- what persisted results do to retries: Prefect's subflow-retries test -----------------

counts = {"parent": 0, "child": 0, "child_opted_out": 0, "task": 0, "task_opted_out": 0}


@task
def step() -> int:
    counts["task"] += 1
    return 1


@task(persist_result=False)
def step_opted_out() -> int:
    counts["task_opted_out"] += 1
    return 1


@flow(name="differences-child")
def child() -> str:
    counts["child"] += 1
    if counts["parent"] < 2:
        raise ValueError("the child fails on the parent's first attempt")
    return "hello"


@flow(name="differences-child-opted-out", persist_result=False)
def child_opted_out() -> str:
    counts["child_opted_out"] += 1
    return "hello"


def _parent() -> str:
    """Attempt 1: the child fails. Attempt 2: the child completes, then the parent fails.
    Attempt 3: is the completed child run again? `step` is called twice with the same
    inputs on every attempt."""
    counts["parent"] += 1
    step()
    step()
    step_opted_out()
    child_opted_out()
    result = child()
    if counts["parent"] < 3:
        raise ValueError("the parent fails after its child completed")
    return result


parent = flow(name="differences-parent", retries=2)(_parent)
# The whole run tree opted out: its subflows and tasks inherit the flow's persist_result.
parent_opted_out = flow(name="differences-parent-opted-out", retries=2, persist_result=False)(
    _parent
)

STOCK = {"parent": 3, "child": 3, "child_opted_out": 3, "task": 6, "task_opted_out": 3}
PERSISTED = {
    "parent": 3,
    # Completed with a persisted result on attempt 2: attempt 3 reuses it.
    "child": 2,
    # persist_result=False: nothing to reuse, so it runs on every attempt, as in stock.
    "child_opted_out": 3,
    # Run once in all: the default cache policy (inputs, source, flow-run id) finds the
    # first call's persisted result for the second call and for every later attempt.
    "task": 1,
    "task_opted_out": 3,
}
BLOCK = "local-file-system/differences-results"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    # Generous start-up timeout: the throwaway server is slow to start on a busy machine.
    with prefect_test_harness(server_startup_timeout=120):
        storage = tmp_path_factory.mktemp("block-results")
        LocalFileSystem(basepath=str(storage)).save(BLOCK.split("/")[1], overwrite=True)
        yield


def _run(
    tmp_path: Path, persist: str, block: str | None = None, fn: Flow[[], str] = parent
) -> dict[str, int]:
    counts.update(dict.fromkeys(counts, 0))
    with temporary_settings(
        {
            PREFECT_RESULTS_PERSIST_BY_DEFAULT: persist,
            PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: block,
            PREFECT_LOCAL_STORAGE_PATH: tmp_path,
        },
    ):
        assert fn() == "hello"
    return dict(counts)


def test_stock_prefect_reruns_completed_subflows_and_tasks(harness: None, tmp_path: Path) -> None:
    assert _run(tmp_path, "false") == STOCK


def test_with_persisted_results_completed_subflows_and_tasks_are_reused(
    harness: None, tmp_path: Path, client: dict[str, str]
) -> None:
    # The platform's own value, as `flowyard env` gives it to every flow run.
    assert _run(tmp_path, client["PREFECT_RESULTS_PERSIST_BY_DEFAULT"]) == PERSISTED


def test_flow_persist_result_false_opts_the_whole_run_out(
    harness: None, tmp_path: Path, client: dict[str, str]
) -> None:
    persist = client["PREFECT_RESULTS_PERSIST_BY_DEFAULT"]
    assert _run(tmp_path, persist, BLOCK, fn=parent_opted_out) == STOCK


def test_persist_by_default_false_is_no_opt_out_while_a_default_block_is_set(
    harness: None, tmp_path: Path, client: dict[str, str]
) -> None:
    # Prefect 3.9 persists whenever PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK is set, which
    # `flowyard env` always sets, and an empty value does not unset it.
    assert client["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"]
    assert _run(tmp_path, "false", BLOCK) == PERSISTED
