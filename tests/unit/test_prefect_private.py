"""The private Prefect names the `flowyard` worker relies on still exist, as it uses them.

`flowyard.worker.prefect_private` is the one place the worker takes them from; this test is
the one place a Prefect upgrade that moves or changes one of them shows up, naming it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from flowyard.worker.prefect_private import RUN_MODULES


def _parameters(obj: Callable[..., Any]) -> set[str]:
    return set(inspect.signature(obj).parameters)


def _needs(where: str, obj: Callable[..., Any], *names: str) -> None:
    missing = set(names) - _parameters(obj)
    assert not missing, f"Prefect changed {where}: no parameter(s) {sorted(missing)}"


def test_the_shim_imports() -> None:
    """Every name is importable (a moved or renamed one fails here, named by ImportError)."""
    from flowyard.worker import prefect_private

    for name in prefect_private.__all__:
        assert hasattr(prefect_private, name), f"prefect_private lacks {name}"


@pytest.mark.parametrize("module", RUN_MODULES)
def test_modules_the_zygote_pre_imports_exist(module: str) -> None:
    importlib.import_module(module)


def test_what_the_worker_constructs_takes_the_arguments_it_passes() -> None:
    from flowyard.worker import prefect_private as p

    _needs("HookRunner()", p.HookRunner, "resolve_flow")
    _needs(
        "EngineCommandStarter()",
        p.EngineCommandStarter,
        *("command", "cwd", "env", "stream_output", "control_channel"),
    )
    _needs("WorkspaceHookRunner()", p.WorkspaceHookRunner, "manifest_path", "stream_output")
    _needs(
        "WorkspaceResolvingEngineCommandStarter()",
        p.WorkspaceResolvingEngineCommandStarter,
        "workspace_root",
        *("command", "stream_output", "control_channel", "source_cwd", "environment"),
    )
    for member in ("hook_runner", "close", "start"):
        assert hasattr(p.WorkspaceResolvingEngineCommandStarter, member), (
            f"Prefect changed WorkspaceResolvingEngineCommandStarter: no {member}"
        )
    _needs(
        "FlowRunExecutor()",
        p.FlowRunExecutor,
        *("flow_run", "starter", "process_manager", "state_proposer", "hook_runner"),
        *("get_attempt_conclusion", "propose_submitting"),
    )
    _needs("FlowRunExecutor.submit", p.FlowRunExecutor.submit, "task_status")
    _needs("ProcessHandle()", p.ProcessHandle, "termination_scope")
    for member in ("flow_run_ids", "get", "kill"):
        assert hasattr(p.ProcessManager, member), f"Prefect changed ProcessManager: no {member}"
    _needs("ProcessManager.kill", p.ProcessManager.kill, "flow_run_id", "grace_seconds")
    for member in ("register", "unregister", "get_conclusion"):
        assert hasattr(p.ControlChannel, member), f"Prefect changed ControlChannel: no {member}"
    for member in ("run_cancellation_hooks", "run_crashed_hooks"):
        assert hasattr(p.FlowRunHookRunner, member), f"Prefect changed FlowRunHookRunner: {member}"
    assert hasattr(p.ProcessStarter, "start"), "Prefect changed ProcessStarter: no start"


def test_what_the_forked_run_calls_takes_the_arguments_it_passes() -> None:
    from flowyard.worker import prefect_private as p

    _needs(
        "prepare_workspace",
        p.prepare_workspace,
        *("client", "flow_run", "deployment", "workspace_root"),
    )
    _needs(
        "prepare_workspace_for_flow_run",
        p.prepare_workspace_for_flow_run,
        "flow_run_id",
        "workspace_root",
    )
    _needs("workspace_environment", p.workspace_environment, "workspace")
    _needs(
        "_workspace_command", p._workspace_command, "workspace", "explicit_command", "environment"
    )
    _needs("_hook_command", p._hook_command, "command")
    _needs(
        "_restore_runner_environment",
        p._restore_runner_environment,
        "environment",
        "runner_environment",
    )
    _needs("_runner_owns_environment_key", p._runner_owns_environment_key, "key")
    _needs("write_private_model", p.write_private_model, "path", "model")
    fields = set(p.PreparedWorkspaceManifest.model_fields)
    wanted = {"working_directory", "project_root", "runtime_entrypoint", "hook_command"}
    missing = (wanted | {"environment"}) - fields
    assert not missing, f"Prefect changed PreparedWorkspaceManifest: no field(s) {missing}"
    _needs(
        "_run_flow_from_runtime_entrypoint",
        p._run_flow_from_runtime_entrypoint,
        "flow_run_id",
        "entrypoint",
    )
    _needs("validate_working_dir", p.validate_working_dir, "v")


def test_what_the_patches_replace_is_still_there() -> None:
    import prefect.flow_engine

    from flowyard.worker import prefect_private as p

    # skip_heartbeat_thread_join wraps this context manager, passing join_on_exit.
    assert hasattr(prefect.flow_engine, "_send_heartbeats"), (
        "Prefect changed prefect.flow_engine: no _send_heartbeats"
    )
    _needs("flow_engine._send_heartbeats", prefect.flow_engine._send_heartbeats, "join_on_exit")
    # replace_client_reads replaces these on the worker's client.
    from prefect.client.orchestration import PrefectClient

    for method in ("read_deployment", "read_flow"):
        assert hasattr(PrefectClient, method), f"Prefect changed PrefectClient: no {method}"
    # patch_cancellation_manager and state_proposer read the context's private attributes,
    # which exist once it is entered: check the manager's own, and the context's source.
    from prefect.runner._cancellation_manager import CancellationManager

    _needs("CancellationManager()", CancellationManager, "hook_runner")
    _needs("CancellationManager.cancel", CancellationManager.cancel, "flow_run", "state_msg")
    source = inspect.getsource(p.FlowRunExecutorContext)
    for attribute in ("_cancellation_manager", "_state_proposer", "process_manager"):
        assert f"self.{attribute} =" in source, (
            f"Prefect changed FlowRunExecutorContext: no self.{attribute}"
        )
    assert "self.control_channel" in source, (
        "Prefect changed FlowRunExecutorContext: no control_channel"
    )
    manager_source = inspect.getsource(CancellationManager)
    assert "self._hook_runner" in manager_source, (
        "Prefect changed CancellationManager: hooks no longer run through self._hook_runner"
    )


def test_base_worker_members_the_worker_overrides_and_reads() -> None:
    from prefect.workers.base import BaseWorker

    from flowyard.worker import FlowyardWorker
    from flowyard.worker import prefect_private as p

    for name, parameters in p.BASE_WORKER_OVERRIDES.items():
        base = getattr(BaseWorker, name, None)
        assert base is not None, (
            f"Prefect changed BaseWorker: no {name} (FlowyardWorker overrides it)"
        )
        _needs(f"BaseWorker.{name}", base, *parameters)
        assert getattr(FlowyardWorker, name) is not base, (
            f"FlowyardWorker no longer overrides {name}"
        )
    # The hooks FlowyardWorker extends, and the loop that calls get_and_submit_flow_runs.
    _needs("BaseWorker.start", BaseWorker.start, "run_once", "with_healthcheck", "printer")
    assert "workload=self.get_and_submit_flow_runs" in inspect.getsource(BaseWorker.start), (
        "Prefect changed BaseWorker.start: its poll loop no longer calls "
        "get_and_submit_flow_runs, which wakes FlowyardWorker's dispatcher"
    )
    worker = FlowyardWorker(work_pool_name="unit-test")
    for attribute in p.BASE_WORKER_ATTRIBUTES:
        assert hasattr(worker, attribute), f"Prefect changed BaseWorker: no {attribute}"
    for attribute in p.WORKER_CLASS_ATTRIBUTES:
        assert hasattr(BaseWorker, attribute), f"Prefect changed BaseWorker: no {attribute}"
    assert FlowyardWorker.get_description() == FlowyardWorker._description


def test_job_configuration_members_the_worker_overrides_and_reads() -> None:
    from prefect.client.schemas.objects import FlowRun
    from prefect.workers.base import BaseJobConfiguration

    from flowyard.worker import prefect_private as p
    from flowyard.worker.config import FlowyardJobConfiguration

    for name in p.JOB_CONFIGURATION_OVERRIDES:
        base = getattr(BaseJobConfiguration, name, None)
        assert base is not None, f"Prefect changed BaseJobConfiguration: no {name}"
        assert _parameters(base) <= {"cls"}, f"Prefect changed BaseJobConfiguration.{name}"
    config = FlowyardJobConfiguration()
    config.prepare_for_flow_run(FlowRun(flow_id="00000000-0000-0000-0000-000000000000"))
    for attribute in p.JOB_CONFIGURATION_ATTRIBUTES:
        assert hasattr(config, attribute), f"Prefect changed BaseJobConfiguration: no {attribute}"
    assert config.command and "prefect.engine" in config.command


def test_no_other_worker_module_imports_private_prefect_names() -> None:
    """So that the shim stays the one place: `prefect.x._y` modules and `_names` of Prefect's
    modules come from `flowyard.worker.prefect_private`, nowhere else in the package."""
    import ast
    from pathlib import Path

    import flowyard.worker

    package = Path(flowyard.worker.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        if path.name == "prefect_private.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules, names = [node.module], [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                modules, names = [a.name for a in node.names], []
            else:
                continue
            for module in modules:
                if module.split(".")[0] != "prefect":
                    continue
                if any(part.startswith("_") for part in module.split(".")) or any(
                    name.startswith("_") for name in names
                ):
                    offenders.append(f"{path.name}:{node.lineno} {module}")
    assert not offenders, f"import these through prefect_private: {offenders}"


def test_the_collections_cache_is_where_the_warmup_fills_it() -> None:
    from flowyard.worker.prefect_private import COLLECTIONS_MODULE

    module = importlib.import_module(COLLECTIONS_MODULE)
    assert hasattr(module, "_collections"), "Prefect moved its collections cache"
    _needs("safe_load_entrypoints", module.safe_load_entrypoints, "entrypoints")
    assert "_collections" in inspect.getsource(module.load_prefect_collections)
