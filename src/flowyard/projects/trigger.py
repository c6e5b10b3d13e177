"""Run a deployment and wait for its final state (child process, platform client env)."""

from __future__ import annotations

import json
import os
import sys

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound


def main() -> None:
    name, params, timeout, queue = (
        sys.argv[1],
        json.loads(sys.argv[2]),
        float(sys.argv[3]),
        sys.argv[4],
    )
    try:
        run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync call returns a FlowRun
            name=name, parameters=params, timeout=timeout, work_queue_name=queue or None
        )
    except ObjectNotFound:
        print(json.dumps({"ok": False, "error": f"no deployment named {name!r}"}))
        sys.exit(2)
    except Exception as exc:  # surfaced to the user as one line
        print(json.dumps({"ok": False, "error": str(exc)}))
        sys.exit(2)
    ui = os.environ["PREFECT_API_URL"].removesuffix("/api")
    state = run.state
    result = None
    if state is not None and state.is_completed():
        try:
            result = state.result()
        except Exception as exc:
            result = f"(result not readable: {exc})"
    print(
        json.dumps(
            {
                "ok": bool(state and state.is_completed()),
                "flow_run_id": str(run.id),
                "flow_run_name": run.name,
                "state": state.type.value if state else None,
                "message": state.message if state else None,
                "url": f"{ui}/runs/flow-run/{run.id}",
                "result": result,
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
