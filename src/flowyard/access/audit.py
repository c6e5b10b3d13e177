"""The audit log: who changed what, and who was refused, in PostgreSQL.

Two writers, each recording what only it knows: the gate records every refusal (the request
never reaches Prefect), and the API process (`flowyard.access.prefect_app`) records every
mutation Prefect handled, with the status Prefect answered and the user the gate named. No
log file is parsed after the fact, so a record cannot be lost to log rotation or a crash
between writing and ingesting, and the final status is the one the client saw.

Rows are queued in memory and written by one background thread in batches, so a request never
waits for the database; if PostgreSQL is down the batch is retried and, past `MAX_QUEUE`, the
oldest rows are dropped with a line in the process's log (availability over completeness:
the platform keeps serving). Rows older than the retention are deleted by the same thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

TABLE = "flowyard_audit"
DSN_VAR = "FLOWYARD_AUDIT_DSN"
RETENTION_VAR = "FLOWYARD_AUDIT_RETENTION_DAYS"
MAX_QUEUE = 100_000
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    username text NOT NULL,
    method text NOT NULL,
    route text NOT NULL,
    path text NOT NULL,
    object_id text,
    status integer NOT NULL,
    source text NOT NULL
);
CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at);
"""
log = logging.getLogger("flowyard.audit")


@dataclass(frozen=True)
class Record:
    username: str
    method: str
    route: str
    path: str
    object_id: str | None
    status: int
    source: str  # "gate" (refused there) or "api" (handled by Prefect)
    at: datetime


def object_id(route: str, path: str) -> str | None:
    """The first path parameter of the route (`/deployments/{id}` -> the id)."""
    template = route.split("/")
    parts = path.split("/")
    if len(template) != len(parts):
        return None
    for t, p in zip(template, parts, strict=True):
        if t.startswith("{"):
            return p
    return None


class AuditWriter:
    def __init__(self, dsn: str, retention_days: int) -> None:
        self._dsn = dsn
        self._retention_days = retention_days
        self._queue: queue.Queue[Record] = queue.Queue(MAX_QUEUE)
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def record(
        self, username: str, method: str, route: str, path: str, status: int, source: str
    ) -> None:
        # The route's template without its method (a column of its own).
        route = route.split(" ", 1)[-1]
        rec = Record(
            username, method, route, path, object_id(route, path), status, source, datetime.now(UTC)
        )
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            log.error("audit queue full (%d rows): dropping %s %s", MAX_QUEUE, method, path)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        pending: list[Record] = []
        last_prune = 0.0
        while True:
            if not pending:
                pending.append(self._queue.get())
            while len(pending) < 500:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._dsn, autocommit=True, connect_timeout=5)
                    conn.execute(DDL)
                with conn.transaction():
                    conn.cursor().executemany(
                        f"INSERT INTO {TABLE} (at, username, method, route, path, object_id, "
                        "status, source) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                        [
                            (
                                r.at,
                                r.username,
                                r.method,
                                r.route,
                                r.path,
                                r.object_id,
                                r.status,
                                r.source,
                            )
                            for r in pending
                        ],
                    )
                pending = []
                if time.monotonic() - last_prune > 3600:
                    conn.execute(
                        f"DELETE FROM {TABLE} WHERE at < now() - make_interval(days => %s)",
                        (self._retention_days,),
                    )
                    last_prune = time.monotonic()
            except psycopg.Error as exc:
                log.warning("audit: cannot write %d rows yet: %s", len(pending), exc)
                conn = None
                time.sleep(1)


def writer_from_env(environ: dict[str, str]) -> AuditWriter | None:
    dsn = environ.get(DSN_VAR)
    if not dsn:
        return None
    return AuditWriter(dsn, int(environ.get(RETENTION_VAR, "90")))


def query(
    conn: psycopg.Connection[Any], since: datetime | None, user: str | None, limit: int
) -> list[dict[str, Any]]:
    """Audit rows, oldest first; [] when nothing was recorded yet (no table)."""
    exists = conn.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone()
    if not exists or exists[0] is None:
        return []
    clauses: list[str] = []
    args: list[object] = []
    if since is not None:
        clauses.append("at >= %s")
        args.append(since)
    if user is not None:
        clauses.append("username = %s")
        args.append(user)
    where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
    cur = conn.execute(
        f"SELECT at, username, method, route, path, object_id, status, source FROM {TABLE} "
        f"{where} ORDER BY at DESC, id DESC LIMIT %s",
        (*args, limit),
    )
    names = [d.name for d in cur.description or []]
    rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return list(reversed(rows))
