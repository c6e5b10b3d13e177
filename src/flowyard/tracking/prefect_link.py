"""The Prefect half of the two-way link: who is running, and where its UI page is.

Everything here uses the sync Prefect client, so it works the same from sync and async flows
and from tasks. Failures on this side are logged, never raised: a run must not fail because
a link could not be written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

logger = logging.getLogger(__name__)

ARTIFACT_KEY = "mlflow-run"
TAG_PREFIX = "mlflow-run:"


@dataclass(frozen=True)
class PrefectRun:
    """The flow run a tracked run belongs to; absent values are None, never "None"."""

    flow_run_id: str
    flow_run_name: str | None = None
    flow_name: str | None = None
    # Prefect's full deployment name, `flow/deployment`: deployment names are unique per flow.
    deployment: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str | None:
        return flow_run_url(self.flow_run_id)


def ui_base_url() -> str | None:
    """PREFECT_UI_URL, else the API URL without its trailing /api (Prefect's own rule)."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    if ui:
        return str(ui).rstrip("/")
    api_url = PREFECT_API_URL.value()
    if not api_url:
        return None
    api = str(api_url).rstrip("/")
    return api[: -len("/api")] if api.endswith("/api") else api


def flow_run_url(flow_run_id: str) -> str | None:
    base = ui_base_url()
    return f"{base}/runs/flow-run/{flow_run_id}" if base else None


def _present(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def current_flow_run() -> PrefectRun | None:
    """The flow run this code runs in (also from inside a task), or None outside Prefect."""
    from prefect.runtime import deployment, flow_run

    run_id = flow_run.id
    if not run_id:
        return None
    flow_name = _present(flow_run.flow_name)
    deployment_name = _present(deployment.name)
    full_deployment = (
        f"{flow_name}/{deployment_name}" if flow_name and deployment_name else deployment_name
    )
    return PrefectRun(
        flow_run_id=str(run_id),
        flow_run_name=_present(flow_run.name),
        flow_name=flow_name,
        deployment=full_deployment,
        parameters=dict(flow_run.parameters or {}),
    )


def link_flow_run(run: PrefectRun, mlflow_run_id: str, mlflow_url: str | None) -> None:
    """Add the `mlflow-run:<id>` tag and, when the run has a URL, a link artifact."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    flow_run_id = UUID(run.flow_run_id)
    try:
        with get_client(sync_client=True) as client:
            if mlflow_url:
                client.create_artifact(
                    ArtifactCreate(
                        key=ARTIFACT_KEY,
                        # What prefect.artifacts.create_link_artifact stores for a link.
                        type="markdown",
                        data=f"[MLflow run {mlflow_run_id}]({mlflow_url})",
                        description="This flow run's parameters, metrics and artifacts in MLflow.",
                        flow_run_id=flow_run_id,
                    )
                )
            tag = TAG_PREFIX + mlflow_run_id
            # The API replaces the tag list, so merge with the tags the run already has.
            tags = list(client.read_flow_run(flow_run_id).tags)
            if tag not in tags:
                client.update_flow_run(flow_run_id, tags=[*tags, tag])
    except Exception as exc:  # bookkeeping must not fail the flow
        logger.warning("Could not link Prefect flow run %s to MLflow: %s", flow_run_id, exc)


def flow_run_states(flow_run_ids: list[str]) -> dict[str, str]:
    """Flow run id -> state name (e.g. Completed, Failed, Crashed), in as few calls as possible."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = sorted({UUID(i) for i in flow_run_ids})
    states: dict[str, str] = {}
    page = 200  # the API's default maximum page size
    with get_client(sync_client=True) as client:
        for start in range(0, len(ids), page):
            chunk = ids[start : start + page]
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=chunk)), limit=len(chunk)
            )
            for fr in runs:
                if fr.state is not None:
                    states[str(fr.id)] = fr.state.name or fr.state.type.value
    return states
