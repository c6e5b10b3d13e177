"""The `flowyard` work-pool type's job configuration and the variables its template exposes.

Same fields as Prefect's process worker (so deployments move between the two pools unchanged)
plus the knobs of the warm start: whether to use it, which modules to keep imported, and a
per-run memory cap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.settings import get_current_settings
from prefect.utilities.processutils import command_to_string, get_sys_executable
from prefect.workers.base import BaseJobConfiguration, BaseVariables
from pydantic import Field, PrivateAttr, field_validator

from flowyard.worker.prefect_private import validate_working_dir

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse

_WARM_START = (
    "Start the run by forking a warm interpreter that has Prefect (and warm_imports) already "
    "imported, instead of a fresh `python -m prefect.engine`. Off, or a custom command, gives "
    "the process worker's cold start."
)
_WARM_IMPORTS = (
    "Modules imported once into the warm interpreter this deployment's runs fork from (heavy "
    "third-party libraries such as pandas or sklearn). Runs with the same list share one warm "
    "interpreter; a changed file of any imported module retires it, so stale code is never run."
)
_MEMORY = (
    "Cap on a run's private memory in MiB (RLIMIT_DATA, which includes the ~150 MiB shared "
    "with the warm interpreter); exceeding it fails that run only. Empty: no cap."
)


# Prefect settings every warm run (and its zygote, so their settings stay equal and the
# fork need not rebuild them) gets before the deployment's own `env`, which may override.
RUN_SETTINGS = {
    # The worker checked this API's version when it started, with the same Prefect the fork
    # runs; Prefect's own setting for such subprocesses skips the repeat (2 requests a run).
    "PREFECT_CLIENT_SERVER_VERSION_CHECK_ENABLED": "False",
}
# ("False", not "false": spelled as Prefect's `to_environment_variables` spells it, or the
# run's settings would differ from the zygote's and be rebuilt, ~0.2 CPU-s.)

_settings_env: tuple[object, dict[str, str]] | None = None


def settings_environment_variables() -> dict[str, str]:
    """`get_current_settings().to_environment_variables(exclude_unset=True)`, computed once
    per settings object: it walks every setting and was half the worker's CPU per run
    (called twice per run, for the same unchanging settings)."""
    global _settings_env
    settings = get_current_settings()
    if _settings_env is None or _settings_env[0] is not settings:
        _settings_env = (settings, settings.to_environment_variables(exclude_unset=True))
    return dict(_settings_env[1])


class FlowyardJobConfiguration(BaseJobConfiguration):
    stream_output: bool = Field(default=True)
    working_dir: Path | None = Field(default=None)
    warm_start: bool = Field(default=True)
    warm_imports: list[str] = Field(default_factory=list)
    memory_limit_mb: int | None = Field(default=None)

    # Set when the deployment or pool supplied its own command: that command is run as is.
    _command_configured: bool = PrivateAttr(default=False)

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, v: Path | str | None) -> Path | None:
        if isinstance(v, str):
            return validate_working_dir(v)
        return v

    @field_validator("warm_imports", mode="before")
    @classmethod
    def _imports(cls, v: Any) -> Any:
        # Templated from a variable, an unset list arrives as None.
        return [] if v is None else v

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        # The base fills in a default command, so note first whether one was configured.
        self._command_configured = self.command is not None
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )
        # Like the process worker: the run inherits the worker's environment, the
        # deployment's variables on top.
        self.env = {**os.environ, **self.env}
        if not self._command_configured:
            self.command = command_to_string([get_sys_executable(), "-m", "prefect.engine"])

    @classmethod
    def _base_environment(cls) -> dict[str, str]:
        return settings_environment_variables()

    @property
    def deployment(self) -> DeploymentResponse | None:
        return self._related_objects.get("deployment")

    @staticmethod
    def _base_flow_run_command() -> str:
        return "python -m prefect.engine"


class FlowyardVariables(BaseVariables):
    stream_output: bool = Field(
        default=True,
        description="Stream the flow run's output to the worker's standard output.",
    )
    working_dir: Path | None = Field(
        default=None,
        title="Working Directory",
        description="Directory the run's workspace is prepared in (pull steps run there). "
        "Default: a temporary directory, removed afterwards.",
    )
    warm_start: bool = Field(default=True, title="Warm Start", description=_WARM_START)
    warm_imports: list[str] = Field(
        default_factory=list, title="Warm Imports", description=_WARM_IMPORTS
    )
    memory_limit_mb: int | None = Field(
        default=None, ge=64, title="Memory Limit (MiB)", description=_MEMORY
    )
