"""The environment of a Kubernetes worker and of the flow-run pods it starts, and the pool's
base job template that hands that environment to every flow-run pod.

The environment is `client_env` of the worker profile, exactly what a joined worker gets,
with the paths a pod has: PREFECT_HOME in the pod's writable /tmp and the CA where its
ConfigMap is mounted. The keys that carry a credential go to a Secret and nowhere else.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from flowyard.client.env import client_env
from flowyard.client.profile import ClientProfile
from flowyard.config.context import Context
from flowyard.config.model import PoolSpec
from flowyard.errors import FlowyardError

# Names of the objects `flowyard render kubernetes` writes (one set per namespace).
SECRET_NAME = "flowyard-worker-secrets"  # the secret keys of the environment (envFrom)
AUTH_SECRET_NAME = "flowyard-worker-auth"  # the auth string alone, for the chart's basicAuth
AUTH_SECRET_KEY = "auth-string"  # the key prefect-worker's basicAuth.existingSecret reads
ENV_CONFIGMAP_NAME = "flowyard-worker-env"  # the rest of the environment (envFrom)
CA_CONFIGMAP_NAME = "flowyard-ca"
CA_VOLUME = "flowyard-ca"
CA_KEY = "ca.crt"
CA_DIR = PurePosixPath("/etc/flowyard/ca")
CA_PATH = CA_DIR / CA_KEY
# Writable in the prefect-worker chart's pod (an emptyDir; its root filesystem is read-only)
# and in any image, whatever user it runs as.
POD_PREFECT_HOME = "/tmp/prefect"
DEFAULT_NAMESPACE = "prefect"
# The worker's own settings, not the flow runs': prefect-kubernetes copies the worker's
# PREFECT_* settings into each Job it creates; with these it refers to the auth string in
# the Secret instead of writing it into the Job's manifest in the clear.
WORKER_SETTINGS = {
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME": SECRET_NAME,
    "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY": "PREFECT_API_AUTH_STRING",
}
# Where `flowyard apply` finds the settings of a kubernetes pool's job template.
SETTINGS_VARIABLE = "FLOWYARD_KUBERNETES_POD_SETTINGS"
# The keys of `client_env` that carry a credential: only the Secret holds them.
SECRET_KEYS = frozenset(
    {
        "PREFECT_API_AUTH_STRING",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "MLFLOW_TRACKING_PASSWORD",
    }
)


def worker_profile(ctx: Context) -> ClientProfile:
    """The one profile Kubernetes workers and their flow runs get: the scoped worker profile
    (the platform workers' `worker` login, the flows' S3 and MLflow credentials); the
    Secret, the values file and the pool's job template all follow from it."""
    return ClientProfile.for_workers(ctx)


@dataclass(frozen=True)
class PodEnv:
    settings: dict[str, str]  # no credential: a ConfigMap, the job template's env
    secrets: dict[str, str]  # SECRET_KEYS only: the Secret
    ca_pem: str | None  # the platform CA (internal TLS); None with a public certificate

    @property
    def all(self) -> dict[str, str]:
        return {**self.settings, **self.secrets}


def secret_values(profile: ClientProfile) -> list[str]:
    values = [profile.auth_string, profile.s3_access_key, profile.s3_secret_key]
    if profile.mlflow:
        values.append(profile.mlflow.password)
    return [v for v in values if v]


def pod_env(profile: ClientProfile) -> PodEnv:
    ca_pem = None
    if profile.ca_file:
        try:
            ca_pem = profile.ca_file.read_text()
        except FileNotFoundError:
            raise FlowyardError(
                f"The platform's CA certificate {profile.ca_file} does not exist yet: Caddy "
                "creates it on the platform's first start.",
                fix="Run `flowyard up` once, then run the command again.",
            ) from None
    in_pod = replace(profile, ca_file=Path(CA_PATH) if profile.ca_file else None)
    env = {**client_env(in_pod), "PREFECT_HOME": POD_PREFECT_HOME}
    secrets = {k: v for k, v in env.items() if k in SECRET_KEYS}
    settings = {k: v for k, v in env.items() if k not in SECRET_KEYS}
    # A credential inside any other setting (a URL with a password, say) would be written
    # in the clear: refuse rather than render it.
    leaked = [k for k, v in settings.items() if any(s in v for s in secret_values(profile))]
    if leaked:
        raise AssertionError(f"settings {leaked} carry a credential: add them to SECRET_KEYS")
    return PodEnv(settings=settings, secrets=secrets, ca_pem=ca_pem)


def platform_pod_env(ctx: Context) -> PodEnv:
    return pod_env(worker_profile(ctx))


def pool_namespace(pool: PoolSpec) -> str:
    return pool.namespace or DEFAULT_NAMESPACE


def job_template(
    default: dict[str, Any], settings: dict[str, str], ca: bool, namespace: str
) -> dict[str, Any]:
    """Prefect's default `kubernetes` base job template, made to give every flow-run pod the
    worker's environment: the settings as the `env` variable's default (a deployment's own
    `env` is merged over it), the Secret through `envFrom`, and the CA ConfigMap mounted.

    Pods run in the pool's namespace by default, where `flowyard render kubernetes` puts the
    Secret and the CA; a deployment that sets its own `namespace` needs them there too."""
    template = copy.deepcopy(default)
    template["variables"]["properties"]["namespace"]["default"] = namespace
    env_var = template["variables"]["properties"]["env"]
    env_var["default"] = dict(settings)
    env_var["description"] = (
        "Environment variables of the flow-run container. Defaults to the Flowyard "
        f"platform's client settings; credentials come from the {SECRET_NAME} Secret."
    )
    job = template["job_configuration"]["job_manifest"]["spec"]
    pod = job["template"]["spec"]
    # Prefect's default puts these Job fields in the pod spec, where Kubernetes drops them
    # (a schema error under strict validation); they belong, with the same values, to the Job.
    for field in ("parallelism", "completions"):
        if field in pod:
            job[field] = pod.pop(field)
    container = pod["containers"][0]
    container["envFrom"] = [{"secretRef": {"name": SECRET_NAME}}]
    if ca:
        container["volumeMounts"] = [
            {"name": CA_VOLUME, "mountPath": str(CA_DIR), "readOnly": True}
        ]
        pod["volumes"] = [{"name": CA_VOLUME, "configMap": {"name": CA_CONFIGMAP_NAME}}]
    return template
