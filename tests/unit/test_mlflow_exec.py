"""`flowyard.services.mlflow_exec`: `mlflow server` that becomes its web server. On an MLflow
upgrade these say whether the private name it replaces is still how MLflow starts it."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
import textwrap

import mlflow.server

from flowyard.services import mlflow_exec


def test_mlflow_starts_its_server_through_the_name_we_replace() -> None:
    assert "_exec_cmd" in mlflow.server._run_server.__code__.co_names, (
        "MLflow changed _run_server: it no longer starts the server through _exec_cmd"
    )
    # The command as its first argument and the server's environment as extra_env, which
    # is what exec_instead runs (read from the syntax tree: layout changes do not matter).
    tree = ast.parse(textwrap.dedent(inspect.getsource(mlflow.server._run_server)))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_exec_cmd"
    ]
    assert len(calls) == 1, "MLflow calls _exec_cmd more than once in _run_server"
    assert len(calls[0].args) == 1, ast.dump(calls[0])
    assert "extra_env" in {k.arg for k in calls[0].keywords}, ast.dump(calls[0])


def test_the_process_becomes_the_command_with_mlflows_environment() -> None:
    code = (
        "import os; from flowyard.services.mlflow_exec import exec_instead; "
        "print(os.getpid(), flush=True); "
        "exec_instead(['/bin/sh', '-c', 'echo $$ $EXTRA'], extra_env={'EXTRA': 'from-mlflow'}, "
        "capture_output=False, synchronous=False)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = out.stdout.split("\n")[:2]
    # The same process (pid), now the command, with the environment MLflow gave it.
    assert after == f"{before} from-mlflow", out.stdout


def test_it_refuses_to_start_without_the_job_runner_it_would_drop() -> None:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"}
    out = subprocess.run(
        [sys.executable, "-m", mlflow_exec.__name__, "server", "--help"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode != 0
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in out.stderr
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    out = subprocess.run(
        [sys.executable, "-m", mlflow_exec.__name__, "server", "--help"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert out.returncode == 0 and "--backend-store-uri" in out.stdout, out.stderr
