"""`flowyard render kubernetes`: what a team applies to its own cluster to run a worker for a
`kubernetes` work pool of this platform.

Writes, into one directory:
- `secret.yaml` (0600, written apart): the Secret with the credential keys of the worker's
  environment, and the Secret with the auth string alone that prefect-worker's basicAuth reads;
- `configmap.yaml`: the rest of the environment, and the platform CA (internal TLS only);
- `values.yaml`: values for prefect-helm's `prefect-worker` chart: worker type kubernetes,
  the pool, the platform's API URL, the auth string from its Secret, the environment from
  the Secret and ConfigMap, the CA mounted where the environment says.

No file but `secret.yaml` holds a credential. The flow-run pods get the same environment
from the pool's base job template (`pods.job_template`, set by `flowyard apply`).
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from flowyard.config.context import Context
from flowyard.config.model import PoolSpec
from flowyard.errors import FlowyardError
from flowyard.files import write_private
from flowyard.kubernetes.pods import (
    AUTH_SECRET_KEY,
    AUTH_SECRET_NAME,
    CA_CONFIGMAP_NAME,
    CA_DIR,
    CA_KEY,
    CA_VOLUME,
    ENV_CONFIGMAP_NAME,
    SECRET_NAME,
    WORKER_SETTINGS,
    PodEnv,
    platform_pod_env,
)

SECRET_FILE = "secret.yaml"
CONFIGMAP_FILE = "configmap.yaml"
VALUES_FILE = "values.yaml"
# The worker runs Prefect's own image for this Prefect version, with prefect-kubernetes.
WORKER_IMAGE = "prefecthq/prefect"
PYTHON_TAG = "python3.11"
LABELS = {"app.kubernetes.io/part-of": "flowyard", "app.kubernetes.io/component": "worker"}

_HEADER = """\
# Flowyard {what}, for work pool {pool!r}.
# Rendered by `flowyard render kubernetes` from this platform's flowyard.toml: do not edit,
# render again after a change. Guide: docs/scaling.md.
"""


def kubernetes_pool(ctx: Context, name: str | None) -> PoolSpec:
    """The `kubernetes` pool to render for: `name`, or the only/first one in the config."""
    pools = [p for p in ctx.config.pools if p.type == "kubernetes"]
    fix = 'Add a [[pools]] table with type = "kubernetes" to flowyard.toml, then `flowyard apply`.'
    if name is None:
        if not pools:
            raise FlowyardError("No work pool of type 'kubernetes' in flowyard.toml.", fix=fix)
        return pools[0]
    for pool in ctx.config.pools:
        if pool.name == name:
            if pool.type != "kubernetes":
                raise FlowyardError(
                    f"Work pool {name!r} is of type {pool.type or 'flowyard'!r}, not 'kubernetes'.",
                    fix=f"Use one of: {', '.join(p.name for p in pools)}." if pools else fix,
                )
            return pool
    raise FlowyardError(f"Unknown work pool {name!r}.", fix=fix)


def _meta(name: str, namespace: str) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(LABELS)}


def secrets(env: PodEnv, namespace: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(SECRET_NAME, namespace),
            "type": "Opaque",
            "stringData": dict(env.secrets),
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": _meta(AUTH_SECRET_NAME, namespace),
            "type": "Opaque",
            "stringData": {AUTH_SECRET_KEY: env.secrets["PREFECT_API_AUTH_STRING"]},
        },
    ]


def configmaps(env: PodEnv, namespace: str) -> list[dict[str, Any]]:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(ENV_CONFIGMAP_NAME, namespace),
            "data": {**env.settings, **WORKER_SETTINGS},
        }
    ]
    if env.ca_pem:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": _meta(CA_CONFIGMAP_NAME, namespace),
                "data": {CA_KEY: env.ca_pem},
            }
        )
    return docs


def helm_values(env: PodEnv, pool: str) -> dict[str, Any]:
    """Values for prefect-helm's `prefect-worker` chart (its values.yaml names them)."""
    worker: dict[str, Any] = {
        "apiConfig": "selfHostedServer",
        "selfHostedServerApiConfig": {
            "apiUrl": env.settings["PREFECT_API_URL"],
            "basicAuth": {"enabled": True, "existingSecret": AUTH_SECRET_NAME},
        },
        "config": {"workPool": pool, "type": "kubernetes"},
        "image": {
            "repository": WORKER_IMAGE,
            "prefectTag": f"{version('prefect')}-{PYTHON_TAG}-kubernetes",
        },
        "extraEnvVarsCM": ENV_CONFIGMAP_NAME,
        "extraEnvVarsSecret": SECRET_NAME,
    }
    if env.ca_pem:
        worker["extraVolumes"] = [{"name": CA_VOLUME, "configMap": {"name": CA_CONFIGMAP_NAME}}]
        worker["extraVolumeMounts"] = [
            {"name": CA_VOLUME, "mountPath": str(CA_DIR), "readOnly": True}
        ]
    return {"fullnameOverride": f"prefect-worker-{pool}", "worker": worker}


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # The CA PEM as a readable block, not one escaped line.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(docs: list[dict[str, Any]], header: str) -> str:
    """Manifests as one multi-document file (`kubectl apply -f`)."""
    return header + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, explicit_start=True)


def dump_values(values: dict[str, Any], header: str) -> str:
    """A Helm values file: one plain document."""
    return header + yaml.dump(values, Dumper=_Dumper, sort_keys=False)


def render_files(env: PodEnv, pool: str, namespace: str) -> dict[str, str]:
    """File name -> content. `SECRET_FILE` is the only one with a credential."""
    return {
        SECRET_FILE: dump(
            secrets(env, namespace),
            _HEADER.format(what="worker credentials (Secrets: keep this file 0600)", pool=pool),
        ),
        CONFIGMAP_FILE: dump(
            configmaps(env, namespace),
            _HEADER.format(what="worker environment and CA (ConfigMaps)", pool=pool),
        ),
        VALUES_FILE: dump_values(
            helm_values(env, pool),
            _HEADER.format(what="values for prefect-helm's prefect-worker chart", pool=pool)
            + f"# helm install prefect-worker-{pool} prefect/prefect-worker "
            f"-n {namespace} -f {VALUES_FILE}\n",
        ),
    }


def write_files(ctx: Context, out_dir: Path, pool: str, namespace: str) -> list[Path]:
    env = platform_pod_env(ctx)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_files(env, pool, namespace).items():
        path = out_dir / name
        if name == SECRET_FILE:
            # Owner-only from the first byte, as the join file.
            write_private(path, text)
        else:
            path.write_text(text)
        written.append(path)
    return written
