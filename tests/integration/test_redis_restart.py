"""Redis holds Prefect's concurrency-limit leases and its background task queue; a restart
must not lose them (a lost lease is a slot leaked for good: PrefectHQ/prefect#17415).

Redis appends every write to its AOF and syncs it each second, so a kill -9 loses at most
the last second; this test gives it that second, kills Redis, and checks the lease, the
slot count and the platform's messaging all come back.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

from flowyard.config.context import Context
from flowyard.platform.supervisor import Supervisor
from flowyard.services import redis
from flowyard.waiting import wait_until
from tests.integration.conftest import run_client
from tests.integration.runs import api

FLOW = """
    import json
    from prefect import flow

    @flow
    def after_redis_restart() -> str:
        return "still here"

    state = after_redis_restart(return_state=True)
    print(json.dumps({"state": state.type.value, "result": state.result()}))
"""


def test_a_redis_restart_keeps_leases_and_slots(platform: Context) -> None:
    name = f"redis-restart-{uuid.uuid4().hex[:8]}"
    api(platform, "POST", "/v2/concurrency_limits/", json={"name": name, "limit": 1})
    lease = api(
        platform,
        "POST",
        "/v2/concurrency_limits/increment-with-lease",
        json={"names": [name], "slots": 1, "lease_duration": 300},
    )
    assert api(platform, "GET", f"/v2/concurrency_limits/{name}")["active_slots"] == 1
    time.sleep(2)  # appendfsync everysec: past the second a crash may lose

    sup = Supervisor(platform.paths)
    before = sup.info(redis.NAME)["pid"]
    os.kill(before, signal.SIGKILL)
    # supervisord restarts it; ready means the AOF has been replayed.
    assert wait_until(
        lambda: sup.info(redis.NAME)["pid"] not in (0, before) and redis.is_ready(platform), 60
    ), "Redis did not come back"

    # The lease survived: it can be renewed, then released, and the slot is free again.
    lease_id = lease["lease_id"]
    api(
        platform,
        "POST",
        f"/v2/concurrency_limits/leases/{lease_id}/renew",
        json={"lease_duration": 300},
    )
    api(
        platform, "POST", "/v2/concurrency_limits/decrement-with-lease", json={"lease_id": lease_id}
    )
    assert api(platform, "GET", f"/v2/concurrency_limits/{name}")["active_slots"] == 0
    api(platform, "DELETE", f"/v2/concurrency_limits/{name}")

    # Events and task runs still flow through the restarted broker.
    out = run_client(platform, FLOW)
    assert out == {"state": "COMPLETED", "result": "still here"}
