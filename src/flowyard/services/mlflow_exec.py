"""`mlflow server` with MLflow's web server in this very process.

Differs from stock MLflow: `mlflow server` starts its web server (uvicorn) as a child
process, then stays resident only to wait for it and forward signals, holding its own copy
of MLflow's imports: about 220 MiB of PSS at idle, and two CPU-seconds at every start, for
nothing. Here MLflow's CLI runs as usual (its checks, its settings, the environment it gives
the server) until the moment it would spawn the server; then this process becomes the
server (exec: the same pid, so supervisord's signals reach uvicorn itself).

The one other thing `mlflow server` does after the spawn is launch the job runner, which
the platform turns off (`MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`, `services.mlflow`); this
refuses to start with it on rather than run without it. It relies on
`mlflow.server._run_server` starting the server through that module's `_exec_cmd`, a
private name: `tests/unit/test_mlflow_exec.py` checks it on an MLflow upgrade.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn


def exec_instead(cmd: list[str], *, extra_env: dict[str, str] | None = None, **_: Any) -> NoReturn:
    """What MLflow's `_exec_cmd` is replaced by: become `cmd`, with MLflow's extra env."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, {**os.environ, **(extra_env or {})})


def main() -> None:
    import mlflow.server
    from mlflow.cli import cli
    from mlflow.environment_variables import MLFLOW_SERVER_ENABLE_JOB_EXECUTION

    if MLFLOW_SERVER_ENABLE_JOB_EXECUTION.get():
        sys.exit(
            "flowyard.services.mlflow_exec: MLflow's job runner would not start "
            "(set MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false, or run `mlflow server`)."
        )
    mlflow.server._exec_cmd = exec_instead
    cli(prog_name="mlflow")  # `server ...` from the command line


if __name__ == "__main__":
    main()
