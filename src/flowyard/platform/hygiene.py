"""Run hygiene self-hosters otherwise build by hand: the zombie-flow automation.

Prefect's documented recipe: a flow run that stops sending heartbeats (its process or machine
died) is marked Crashed by a proactive automation, instead of sitting in Running forever.
"""

from __future__ import annotations

from datetime import timedelta

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


async def apply_automations(client: PrefectClient, config: FlowyardConfig, log: list[str]) -> None:
    wanted = zombie_automation(config.hygiene.zombie_heartbeat_seconds)
    for existing in await client.read_automations_by_name(ZOMBIE_AUTOMATION):
        await client.delete_automation(existing.id)
    await client.create_automation(wanted)
    log.append(f"automation {ZOMBIE_AUTOMATION!r}: applied")
