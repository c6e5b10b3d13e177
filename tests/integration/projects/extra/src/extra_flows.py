"""Small flows the workload tests deploy next to the real flows/ project."""

import time

from prefect import flow


@flow
def hello(name: str = "World") -> str:
    return f"Hello, {name}!"


@flow
def sleepy(seconds: float = 600) -> str:
    time.sleep(seconds)
    return "woke up"
