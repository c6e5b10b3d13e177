"""Flowyard's Prefect worker type, `flowyard`.

Registered with Prefect through the `prefect.collections` entry point (Prefect imports this
package whenever it looks up worker types); importing it defines `FlowyardWorker`, which
Prefect's dispatch registry records under its `type`. Keep this import light: every Prefect
process that loads collections pays for it.
"""

from flowyard.worker.worker_type import FlowyardWorker

__all__ = ["FlowyardWorker"]
