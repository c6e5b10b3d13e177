"""The design document's hello-world flow, ported to Prefect 3."""

from prefect import flow, task


@task(log_prints=True)
def say_hello(name: str) -> str:
    greeting = f"Hello, {name}!"
    # log_prints turns this into a Prefect log line, so it shows in the UI too.
    print(greeting)
    return greeting


@flow(log_prints=True)  # flow name: "greeting-flow"
def greeting_flow(name: str = "World") -> str:
    return say_hello(name)


if __name__ == "__main__":
    greeting_flow()
