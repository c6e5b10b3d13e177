"""Prefect profiles files rendered from the config.

`flowyard` is the client profile (the settings `flowyard env` prints) used by the worker and
the CLI's children. Server processes get a file whose one profile is empty on purpose: they
take every setting from their supervised environment, and the file only keeps a user's
~/.prefect/profiles.toml from leaking into them.
"""

from __future__ import annotations

import tomli_w

from flowyard.client.env import platform_client_env
from flowyard.config.context import Context

CLIENT_PROFILE = "flowyard"
SERVER_PROFILE = "server"


def render_profiles(ctx: Context) -> str:
    client = {k: v for k, v in platform_client_env(ctx).items() if k.startswith("PREFECT_")}
    header = "# Rendered by flowyard from flowyard.toml; holds the API credential: keep 0600.\n"
    return header + tomli_w.dumps({"active": CLIENT_PROFILE, "profiles": {CLIENT_PROFILE: client}})


def render_server_profiles() -> str:
    return tomli_w.dumps({"active": SERVER_PROFILE, "profiles": {SERVER_PROFILE: {}}})
