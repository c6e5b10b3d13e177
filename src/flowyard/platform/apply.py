"""`flowyard apply`, also run by `flowyard up` once the API is ready: the Prefect objects
of `flowyard.toml` (results block, pools, queues, limits, automations) made to match.

The work itself is `flowyard.platform.prefect_objects`, run in a child process so that
Prefect's client settings come from the platform's environment, never the caller's.
"""

from __future__ import annotations

import json
import subprocess
import sys

from flowyard.client.env import child_env
from flowyard.client.profile import RESULTS_BLOCK_SLUG
from flowyard.config.context import Context
from flowyard.errors import FlowyardError
from flowyard.kubernetes.pods import SETTINGS_VARIABLE, platform_pod_env


def apply(ctx: Context) -> list[str]:
    """Create or update the results block, pools, queues, limits and automations."""
    # Through the proxy with the platform's client profile, TLS verified, like any client:
    # natively the API listens on an owner-only socket, which Prefect's client cannot use.
    env = child_env(ctx, FLOWYARD_SETUP_CONFIG=ctx.config.model_dump_json())
    if any(p.type == "kubernetes" for p in ctx.config.pools):
        # A kubernetes pool's job template carries the pods' settings (never a credential:
        # those stay in the cluster's Secret); the child has the config but no secrets.
        env[SETTINGS_VARIABLE] = json.dumps(platform_pod_env(ctx).settings)
    result = subprocess.run(
        [sys.executable, "-m", "flowyard.platform.prefect_objects", RESULTS_BLOCK_SLUG],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FlowyardError(
            f"Applying pools, queues and limits failed: {message}",
            fix="Correct `pools` / `global_limits` in flowyard.toml and run `flowyard apply`.",
            details=result.stderr,
        )
    return list(json.loads(result.stdout.strip().splitlines()[-1]))
