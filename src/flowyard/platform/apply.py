"""`flowyard apply`, also run by `flowyard up` once the API is ready: the Prefect objects
of `flowyard.toml` (results block, pools, queues, limits, automations) made to match.

The work itself is `flowyard.platform.prefect_objects`, run in a child process so that
Prefect's client settings come from the platform's environment, never the caller's.
"""

from __future__ import annotations

import json
import subprocess
import sys

from flowyard.client.api import local_api_url
from flowyard.client.env import child_env
from flowyard.client.profile import RESULTS_BLOCK_SLUG
from flowyard.config.context import Context
from flowyard.errors import FlowyardError


def apply(ctx: Context) -> list[str]:
    """Create or update the results block, pools, queues, limits and automations."""
    env = child_env(
        ctx,
        # Bootstrap talks to the API on loopback so it works before the proxy is up.
        PREFECT_API_URL=local_api_url(ctx),
        FLOWYARD_SETUP_CONFIG=ctx.config.model_dump_json(),
        # Not the client profile: it names the proxy's CA file, which Caddy has not made yet.
        PREFECT_PROFILES_PATH=str(ctx.paths.prefect_server_profiles),
    )
    # Plain HTTP on loopback: Caddy (and its CA file) may not exist yet on a first start.
    env.pop("PREFECT_API_SSL_CERT_FILE", None)
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
