"""The platform's check flow (see prefect.yaml beside it): runs on a worker, returns a value
that Prefect persists in the results bucket."""

from prefect import flow


@flow(name="flowyard-check", persist_result=True)
def platform_check() -> str:
    return "platform check ok"
