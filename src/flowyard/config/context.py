"""The one object every layer is handed: the config, its secrets, its paths, and where the
platform's processes find each other.

It lives in the config layer so services, renderers and the platform can all take it
without importing upward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowyard.config.load import load_config
from flowyard.config.model import LOOPBACK, FlowyardConfig
from flowyard.config.paths import Paths
from flowyard.config.secrets import Secrets, load_secrets


@dataclass(frozen=True)
class Hosts:
    """Where platform processes listen and find each other.

    Natively everything is on loopback; under compose each service is its own container, so
    the compose renderer passes container names here and the same functions that build
    native settings build the container ones (`flowyard.compose.view`).
    """

    bind: str = LOOPBACK
    postgres: str = LOOPBACK
    redis: str = LOOPBACK
    object_store: str = LOOPBACK
    prefect_api: str = LOOPBACK
    mlflow: str = LOOPBACK
    metrics: str = LOOPBACK
    gate: str = LOOPBACK
    # Where Caddy listens: None means the config's `proxy.listen_address`. A container
    # listens on every interface of its own network namespace; published ports decide.
    proxy_bind: str | None = None
    # Natively the internal hops are Unix sockets in owner-only directories (loopback is
    # shared with every local user); containers talk TCP on their private networks.
    use_sockets: bool = True


@dataclass(frozen=True)
class Context:
    """Everything a service needs to describe itself: the one config, its secrets, its paths."""

    config: FlowyardConfig
    secrets: Secrets
    hosts: Hosts = Hosts()

    @property
    def paths(self) -> Paths:
        return Paths(self.config.home)


def load_context(home: Path | None = None) -> Context:
    config = load_config(home)
    return Context(config=config, secrets=load_secrets(Paths(config.home).secrets_file))
