"""Reading the audit log (written by the gate and the API process, `flowyard.access.audit`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flowyard.access import audit
from flowyard.config.context import Context
from flowyard.services import postgres


def audit_rows(
    ctx: Context, since: datetime | None, user: str | None, limit: int
) -> list[dict[str, Any]]:
    with postgres.connect(ctx, "prefect") as conn:
        return audit.query(conn, since, user, limit)
