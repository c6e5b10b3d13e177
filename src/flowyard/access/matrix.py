"""Who may call what: the role x route x method matrix of Prefect's API, as data.

Stock Prefect's open-source server has one credential that may do everything. Flowyard's gate
(`flowyard.access.gate`) authorizes each request by its caller's role against this table.
`ROUTES` lists every route and method of Prefect's own OpenAPI (paths under `/api`), each with
a class; `CLASSES` says which roles a class admits. A unit test compares `ROUTES` with the
installed Prefect's OpenAPI, so a Prefect upgrade that adds a route fails until it is decided
here; docs/access.md is generated from this table (and checked for drift).

Decisions that are not obvious from the method:
- read-only POSTs (`*/filter`, `*/count`, `*/history`, `*/paginate`, the UI's counts) are reads;
- `POST /block_documents/filter` can ask for secret values in its body, which the gate cannot
  see, so only workers (flow runs load blocks) and admins may call it; a GET with
  `include_secrets=true` likewise (`SECRET_QUERY`);
- `GET /admin/settings` and `/admin/storage` show the server's configuration: admin only;
- requests to a route that is not in the table are for admins only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs

PUBLIC = "public"
# Role names (flowyard.config.users.ROLES); kept literal here so this table is pure data.
CLASSES: Mapping[str, tuple[str, ...]] = {
    # No login needed: probes.
    PUBLIC: ("anonymous", "viewer", "operator", "worker", "admin"),
    "read": ("viewer", "operator", "worker", "admin"),
    # Run deployments, cancel/retry/suspend/resume runs, pause/resume schedules.
    "operate": ("operator", "admin"),
    # Both: a worker's flow runs start deployments (run_deployment) and set their own states.
    "run": ("operator", "worker", "admin"),
    # What a worker and its flow runs need (Prefect's worker, runner and flow-run engine).
    "work": ("worker", "admin"),
    # Can reveal block secrets.
    "secret": ("worker", "admin"),
    "admin": ("admin",),
}

# Websocket routes (not in the OpenAPI): authenticated in-band by the API itself
# (`flowyard.access.prefect_app`), which checks the role against this table.
WEBSOCKETS: Mapping[str, str] = {
    "/events/in": "work",
    "/events/out": "read",
    "/logs/out": "read",
    "/task_runs/subscriptions/scheduled": "work",
    "/work_pools/{name}/workers/connect": "work",
}

# Mutations left out of the audit log: a worker's polls and heartbeats, flow runs' logs and
# events, and concurrency-slot leases, each made every few seconds by every worker or run,
# which would drown the changes people make. Their refusals are recorded all the same.
NOT_AUDITED = frozenset(
    {
        "POST /work_pools/{name}/get_scheduled_flow_runs",
        "POST /work_pools/{work_pool_name}/workers/heartbeat",
        "POST /deployments/get_scheduled_flow_runs",
        "POST /work_queues/{id}/get_runs",
        "POST /logs/",
        "POST /events",
        "POST /v2/concurrency_limits/increment",
        "POST /v2/concurrency_limits/decrement",
        "POST /v2/concurrency_limits/increment-with-lease",
        "POST /v2/concurrency_limits/decrement-with-lease",
        "POST /v2/concurrency_limits/leases/{lease_id}/renew",
        "POST /concurrency_limits/increment",
        "POST /concurrency_limits/decrement",
    }
)

ROUTES: Mapping[str, str] = {
    "GET /admin/settings": "admin",
    "GET /admin/storage": "admin",
    "PUT /admin/storage": "admin",
    "DELETE /admin/storage": "admin",
    "GET /admin/version": "read",
    "POST /artifacts/": "work",
    "POST /artifacts/count": "read",
    "POST /artifacts/filter": "read",
    "POST /artifacts/latest/count": "read",
    "POST /artifacts/latest/filter": "read",
    "GET /artifacts/{id}": "read",
    "PATCH /artifacts/{id}": "work",
    "DELETE /artifacts/{id}": "admin",
    "GET /artifacts/{key}/latest": "read",
    "POST /automations/": "admin",
    "POST /automations/count": "read",
    "POST /automations/filter": "read",
    "DELETE /automations/owned-by/{resource_id}": "admin",
    "GET /automations/related-to/{resource_id}": "read",
    "POST /automations/templates/validate": "read",
    "PUT /automations/{id}": "admin",
    "PATCH /automations/{id}": "admin",
    "DELETE /automations/{id}": "admin",
    "GET /automations/{id}": "read",
    "GET /block_capabilities/": "read",
    "POST /block_documents/": "admin",
    "POST /block_documents/count": "read",
    "POST /block_documents/filter": "secret",
    "GET /block_documents/{id}": "read",
    "DELETE /block_documents/{id}": "admin",
    "PATCH /block_documents/{id}": "admin",
    "POST /block_schemas/": "admin",
    "GET /block_schemas/checksum/{checksum}": "read",
    "POST /block_schemas/filter": "read",
    "DELETE /block_schemas/{id}": "admin",
    "GET /block_schemas/{id}": "read",
    "POST /block_types/": "admin",
    "POST /block_types/filter": "read",
    "POST /block_types/install_system_block_types": "admin",
    "GET /block_types/slug/{slug}": "read",
    "GET /block_types/slug/{slug}/block_documents": "read",
    "GET /block_types/slug/{slug}/block_documents/name/{block_document_name}": "read",
    "GET /block_types/{id}": "read",
    "PATCH /block_types/{id}": "admin",
    "DELETE /block_types/{id}": "admin",
    "GET /collections/views/{view}": "read",
    "POST /concurrency_limits/": "admin",
    "POST /concurrency_limits/decrement": "work",
    "POST /concurrency_limits/filter": "read",
    "POST /concurrency_limits/increment": "work",
    "GET /concurrency_limits/tag/{tag}": "read",
    "DELETE /concurrency_limits/tag/{tag}": "admin",
    "POST /concurrency_limits/tag/{tag}/reset": "admin",
    "GET /concurrency_limits/{id}": "read",
    "DELETE /concurrency_limits/{id}": "admin",
    "GET /csrf-token": "admin",
    "POST /deployments/": "admin",
    "POST /deployments/bulk_delete": "admin",
    "POST /deployments/count": "read",
    "POST /deployments/filter": "read",
    "POST /deployments/get_scheduled_flow_runs": "work",
    "GET /deployments/name/{flow_name}/{deployment_name}": "read",
    "POST /deployments/paginate": "read",
    "PATCH /deployments/{id}": "admin",
    "GET /deployments/{id}": "read",
    "DELETE /deployments/{id}": "admin",
    "POST /deployments/{id}/create_flow_run": "run",
    "POST /deployments/{id}/create_flow_run/bulk": "operate",
    "POST /deployments/{id}/pause_deployment": "operate",
    "POST /deployments/{id}/resume_deployment": "operate",
    "POST /deployments/{id}/schedule": "admin",
    "GET /deployments/{id}/schedules": "read",
    "POST /deployments/{id}/schedules": "admin",
    "PATCH /deployments/{id}/schedules/{schedule_id}": "operate",
    "DELETE /deployments/{id}/schedules/{schedule_id}": "admin",
    "GET /deployments/{id}/work_queue_check": "read",
    "POST /events": "work",
    "POST /events/count-by/{countable}": "read",
    "POST /events/filter": "read",
    "GET /events/filter/next": "read",
    "GET /flow_run_states/": "read",
    "GET /flow_run_states/{id}": "read",
    "POST /flow_runs/": "work",
    "POST /flow_runs/bulk_delete": "admin",
    "POST /flow_runs/bulk_set_state": "operate",
    "POST /flow_runs/count": "read",
    "POST /flow_runs/filter": "read",
    "POST /flow_runs/history": "read",
    "POST /flow_runs/lateness": "read",
    "POST /flow_runs/paginate": "read",
    "PATCH /flow_runs/{id}": "work",
    "GET /flow_runs/{id}": "read",
    "DELETE /flow_runs/{id}": "admin",
    "GET /flow_runs/{id}/graph": "read",
    "GET /flow_runs/{id}/graph-v2": "read",
    "POST /flow_runs/{id}/input": "run",
    "POST /flow_runs/{id}/input/filter": "read",
    "GET /flow_runs/{id}/input/{key}": "read",
    "DELETE /flow_runs/{id}/input/{key}": "work",
    "PATCH /flow_runs/{id}/labels": "work",
    "GET /flow_runs/{id}/logs/download": "read",
    "POST /flow_runs/{id}/resume": "run",
    "POST /flow_runs/{id}/set_state": "run",
    "POST /flows/": "work",
    "POST /flows/bulk_delete": "admin",
    "POST /flows/count": "read",
    "POST /flows/filter": "read",
    "GET /flows/name/{name}": "read",
    "POST /flows/paginate": "read",
    "PATCH /flows/{id}": "admin",
    "GET /flows/{id}": "read",
    "DELETE /flows/{id}": "admin",
    "GET /health": "public",
    "GET /hello": "read",
    "POST /logs/": "work",
    "POST /logs/filter": "read",
    "GET /observed-states": "read",
    "GET /ready": "public",
    "PUT /saved_searches/": "admin",
    "POST /saved_searches/filter": "read",
    "GET /saved_searches/{id}": "read",
    "DELETE /saved_searches/{id}": "admin",
    "GET /task_run_states/": "read",
    "GET /task_run_states/{id}": "read",
    "POST /task_runs/": "work",
    "POST /task_runs/count": "read",
    "POST /task_runs/filter": "read",
    "POST /task_runs/history": "read",
    "POST /task_runs/paginate": "read",
    "PATCH /task_runs/{id}": "work",
    "GET /task_runs/{id}": "read",
    "DELETE /task_runs/{id}": "admin",
    "POST /task_runs/{id}/set_state": "work",
    "POST /task_workers/filter": "read",
    "POST /templates/validate": "read",
    "POST /ui/flow_runs/count-task-runs": "read",
    "POST /ui/flow_runs/history": "read",
    "POST /ui/flows/count-deployments": "read",
    "POST /ui/flows/next-runs": "read",
    "POST /ui/schemas/validate": "read",
    "POST /ui/task_runs/count": "read",
    "POST /ui/task_runs/dashboard/counts": "read",
    "GET /ui/task_runs/{id}": "read",
    "POST /v2/concurrency_limits/": "admin",
    "POST /v2/concurrency_limits/decrement": "work",
    "POST /v2/concurrency_limits/decrement-with-lease": "work",
    "POST /v2/concurrency_limits/filter": "read",
    "POST /v2/concurrency_limits/increment": "work",
    "POST /v2/concurrency_limits/increment-with-lease": "work",
    "POST /v2/concurrency_limits/leases/{lease_id}/renew": "work",
    "GET /v2/concurrency_limits/{id_or_name}": "read",
    "PATCH /v2/concurrency_limits/{id_or_name}": "admin",
    "DELETE /v2/concurrency_limits/{id_or_name}": "admin",
    "POST /variables/": "admin",
    "POST /variables/count": "read",
    "POST /variables/filter": "read",
    "GET /variables/name/{name}": "read",
    "PATCH /variables/name/{name}": "admin",
    "DELETE /variables/name/{name}": "admin",
    "GET /variables/{id}": "read",
    "PATCH /variables/{id}": "admin",
    "DELETE /variables/{id}": "admin",
    "GET /version": "read",
    "POST /work_pools/": "admin",
    "POST /work_pools/count": "read",
    "POST /work_pools/filter": "read",
    "GET /work_pools/{name}": "read",
    "PATCH /work_pools/{name}": "admin",
    "DELETE /work_pools/{name}": "admin",
    "POST /work_pools/{name}/concurrency_status": "read",
    "POST /work_pools/{name}/get_scheduled_flow_runs": "work",
    "POST /work_pools/{work_pool_name}/queues": "admin",
    "POST /work_pools/{work_pool_name}/queues/filter": "read",
    "GET /work_pools/{work_pool_name}/queues/{name}": "read",
    "PATCH /work_pools/{work_pool_name}/queues/{name}": "admin",
    "DELETE /work_pools/{work_pool_name}/queues/{name}": "admin",
    "POST /work_pools/{work_pool_name}/workers/filter": "read",
    "POST /work_pools/{work_pool_name}/workers/heartbeat": "work",
    "DELETE /work_pools/{work_pool_name}/workers/{name}": "admin",
    "POST /work_queues/": "admin",
    "POST /work_queues/filter": "read",
    "GET /work_queues/name/{name}": "read",
    "PATCH /work_queues/{id}": "admin",
    "GET /work_queues/{id}": "read",
    "DELETE /work_queues/{id}": "admin",
    "POST /work_queues/{id}/concurrency_status": "read",
    "POST /work_queues/{id}/get_runs": "work",
    "GET /work_queues/{id}/status": "read",
}


@dataclass(frozen=True)
class Decision:
    route: str  # "METHOD /template", or "METHOD ?" for a route not in the table
    klass: str

    def allows(self, role: str) -> bool:
        return role in CLASSES[self.klass]


def _compile(templates: list[str]) -> list[tuple[re.Pattern[str], str]]:
    """Templates as regexes, the most literal first (`/deployments/filter` before
    `/deployments/{id}`), so a parameter never shadows a fixed path."""
    ordered = sorted(
        templates, key=lambda t: tuple(0 if s.startswith("{") else 1 for s in t.split("/"))
    )
    return [
        (re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(t)) + "/?"), t)
        for t in reversed(ordered)
    ]


_BY_METHOD: dict[str, list[tuple[re.Pattern[str], str]]] = {
    method: _compile([k.split(" ", 1)[1] for k in ROUTES if k.startswith(method + " ")])
    for method in {k.split(" ", 1)[0] for k in ROUTES}
}
_WS = _compile(list(WEBSOCKETS))

SECRET_QUERY = "include_secrets"


def decide(method: str, path: str, query: str = "") -> Decision:
    """The class of an API request; `path` is under `/api` (without that prefix)."""
    method = method.upper()
    for pattern, template in _BY_METHOD.get(method, ()):
        if pattern.fullmatch(path):
            klass = ROUTES[f"{method} {template}"]
            if klass == "read" and query and _asks_secrets(query):
                klass = "secret"
            return Decision(f"{method} {template}", klass)
    return Decision(f"{method} ?", "admin")


def public_paths() -> list[str]:
    """The API paths anyone may GET (Prefect's probes, which Prefect itself answers without
    its credential): the proxy sends them straight to the API, not through the gate, whose
    answer could only be yes (`services.caddyfile`)."""
    return sorted(
        route.split(" ", 1)[1]
        for route, klass in ROUTES.items()
        if klass == PUBLIC and route.startswith("GET ") and "{" not in route
    )


def websocket_class(path: str) -> str | None:
    """The class of a websocket route (path under `/api`); None when it is not one."""
    for pattern, template in _WS:
        if pattern.fullmatch(path):
            return WEBSOCKETS[template]
    return None


def _asks_secrets(query: str) -> bool:
    values = parse_qs(query).get(SECRET_QUERY, [])
    return any(v.lower() in ("true", "1", "yes") for v in values)


def is_mutation(method: str) -> bool:
    return method.upper() not in ("GET", "HEAD", "OPTIONS")


def audited(decision: Decision) -> bool:
    """Whether an allowed request goes to the audit log: changes, not reads or polls."""
    method = decision.route.split(" ", 1)[0]
    return is_mutation(method) and decision.klass != "read" and decision.route not in NOT_AUDITED


ROLE_COLUMNS = ("viewer", "operator", "worker", "admin")


def markdown() -> str:
    """The matrix as docs/access.md shows it (a unit test keeps the page current)."""
    lines = [
        "| method | route (under `/api`) | " + " | ".join(ROLE_COLUMNS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in ROLE_COLUMNS) + " |",
    ]
    order = {"GET": 0, "POST": 1, "PUT": 2, "PATCH": 3, "DELETE": 4}
    keyed = sorted(ROUTES.items(), key=lambda kv: (kv[0].split(" ", 1)[1], order[kv[0].split()[0]]))
    for route, klass in keyed:
        method, path = route.split(" ", 1)
        marks = " | ".join("✓" if r in CLASSES[klass] else "" for r in ROLE_COLUMNS)
        lines.append(f"| {method} | `{path}` | {marks} |")
    for path, klass in WEBSOCKETS.items():
        marks = " | ".join("✓" if r in CLASSES[klass] else "" for r in ROLE_COLUMNS)
        lines.append(f"| websocket | `{path}` | {marks} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
