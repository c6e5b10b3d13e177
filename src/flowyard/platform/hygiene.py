"""Run hygiene self-hosters otherwise build by hand: the zombie-flow automation.

Prefect's documented recipe: a flow run that stops sending heartbeats (its process or machine
died) is marked Crashed by a proactive automation, instead of sitting in Running forever.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

from flowyard.config.model import FlowyardConfig

ZOMBIE_AUTOMATION = "flowyard: crash zombie flow runs"


def zombie_automation(heartbeat_seconds: int) -> AutomationCore:
    return AutomationCore(
        name=ZOMBIE_AUTOMATION,
        description="Marks a flow run Crashed when its heartbeats stop (flowyard apply).",
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=heartbeat_seconds),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {heartbeat_seconds} s: the flow run's process died.",
            )
        ],
    )


def _definition(automation: AutomationCore) -> dict[str, Any]:
    """What the automation does, without the ids Prefect gives it and its trigger."""
    data = automation.model_dump(mode="json", exclude={"id", "created", "updated"})
    data["trigger"].pop("id", None)
    # Sets of event names, dumped as lists in no particular order.
    for key in ("after", "expect", "for_each"):
        data["trigger"][key] = sorted(data["trigger"].get(key) or [])
    return {k: data[k] for k in AutomationCore.model_fields}


async def apply_automations(client: PrefectClient, config: FlowyardConfig, log: list[str]) -> None:
    """Create the zombie automation, or replace it when its definition changed.

    An unchanged automation is left alone: Prefect keeps each run's heartbeat window (its
    trigger "bucket") under the automation's and trigger's ids, and deletes them with the
    automation. Replaced at every `up`, a run whose process died just before (a power loss)
    would lose its window and stay Running for ever; tests/integration/test_faults_more.py
    test_power_loss.
    """
    wanted = zombie_automation(config.hygiene.zombie_heartbeat_seconds)
    existing = await client.read_automations_by_name(ZOMBIE_AUTOMATION)
    if len(existing) == 1 and _definition(existing[0]) == _definition(wanted):
        log.append(f"automation {ZOMBIE_AUTOMATION!r}: unchanged")
        return
    for automation in existing:
        await client.delete_automation(automation.id)
    await client.create_automation(wanted)
    log.append(f"automation {ZOMBIE_AUTOMATION!r}: applied")
