"""Kubernetes workers: `flowyard render kubernetes` and the kubernetes pool's job template,
checked statically (no cluster here).

Every manifest, including the Job the pool's template makes and the worker pod the chart
makes from the values file, is validated with `kubernetes-validate` against one pinned
Kubernetes schema version; no file but the Secret's holds a credential; and a worker or
flow-run pod gets every setting a joined worker gets.
"""

from __future__ import annotations

import json
import stat
from importlib.resources import files
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from prefect.utilities.templating import apply_values
from typer.testing import CliRunner

from flowyard.cli.app import app
from flowyard.client.env import PATH_KEYS
from flowyard.client.joinfile import JoinInfo
from flowyard.config.context import Context
from flowyard.config.load import load_config, write_config
from flowyard.config.secrets import Secrets, write_secrets
from flowyard.errors import FlowyardError
from flowyard.kubernetes import pods
from flowyard.kubernetes import render as k8s
from flowyard.platform.join import join_info, joined_worker_env

# The schema version every manifest is validated against (kubernetes-validate ships it).
KUBERNETES_VERSION = "1.31"
FAKE_CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
POOL = "cluster"
SECTIONS: list[dict[str, Any]] = [
    {},
    {"mlflow": {"enabled": False}},
    {"object_store": {"kind": "external", "endpoint_url": "https://s3.example.com"}},
    {"proxy": {"host": "flowyard.example.com", "tls": "acme", "acme_email": "a@example.com"}},
]
# The prefect-worker chart's values this renderer sets, with their types, as its values.yaml
# and README values table name them (PrefectHQ/prefect-helm, charts/prefect-worker, read
# at commit 8791eab4f1c016695ddfa5b07ab9314eccfd0146): a renamed key fails here.
CHART_VALUES: dict[str, type] = {
    "fullnameOverride": str,
    "worker.apiConfig": str,
    "worker.selfHostedServerApiConfig.apiUrl": str,
    "worker.selfHostedServerApiConfig.basicAuth.enabled": bool,
    "worker.selfHostedServerApiConfig.basicAuth.existingSecret": str,
    "worker.config.workPool": str,
    "worker.config.type": str,
    "worker.image.repository": str,
    "worker.image.prefectTag": str,
    "worker.extraEnvVarsCM": str,
    "worker.extraEnvVarsSecret": str,
    "worker.extraVolumes": list,
    "worker.extraVolumeMounts": list,
}
API_CONFIGS = {"cloud", "selfManagedCloud", "selfHostedServer"}


def platform(tmp_path: Path, **sections: Any) -> Context:
    home = tmp_path / "server"
    home.mkdir(exist_ok=True)
    config = load_config(home, require_file=False)
    pools = [{"name": "default"}, {"name": POOL, "type": "kubernetes"}]
    config = config.model_validate({**config.model_dump(), "pools": pools, **sections})
    ctx = Context(config=config, secrets=Secrets.generate())
    ctx.paths.ca_cert.parent.mkdir(parents=True, exist_ok=True)
    ctx.paths.ca_cert.write_text(FAKE_CA)
    return ctx


def rendered(ctx: Context, out: Path, namespace: str = "prefect") -> dict[str, str]:
    paths = k8s.write_files(ctx, out, POOL, namespace)
    return {p.name: p.read_text() for p in paths}


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def validate(manifest: dict[str, Any]) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def default_job_template() -> dict[str, Any]:
    """Prefect's default `kubernetes` base job template, from the collections registry Prefect
    bundles (what the API serves when prefect-kubernetes is not installed where it runs)."""
    path = files("prefect.server.api") / "collections_data/views/aggregate-worker-metadata.json"
    registry = json.loads(path.read_text())
    template: dict[str, Any] = registry["prefect-kubernetes"]["kubernetes"][
        "default_base_job_configuration"
    ]
    return template


def job_for(template: dict[str, Any], **job_variables: Any) -> dict[str, Any]:
    """The Job a kubernetes worker submits from `template`, as prefect-kubernetes builds it:
    variable defaults, a deployment's job variables (its `env` merged over the default),
    then the env mapping as a container's list."""
    properties = template["variables"]["properties"]
    variables = {k: v["default"] for k, v in properties.items() if "default" in v}
    env = {**variables.get("env", {}), **job_variables.pop("env", {})}
    variables.update(job_variables, env=env, name="flow-run-1")
    config = apply_values(template["job_configuration"], variables)
    manifest: dict[str, Any] = config["job_manifest"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in config["env"].items()]
    return manifest


def worker_pod(values: dict[str, Any], namespace: str) -> dict[str, Any]:
    """The worker pod the prefect-worker chart makes from `values`: its own env (API URL,
    the auth string from basicAuth's Secret), then the extra env and volumes the values add."""
    w = values["worker"]
    auth = w["selfHostedServerApiConfig"]["basicAuth"]
    env: list[dict[str, Any]] = [
        {"name": "HOME", "value": "/home/prefect"},
        {"name": "PREFECT_API_URL", "value": w["selfHostedServerApiConfig"]["apiUrl"]},
        {
            "name": "PREFECT_API_AUTH_STRING",
            "valueFrom": {
                "secretKeyRef": {"name": auth["existingSecret"], "key": pods.AUTH_SECRET_KEY}
            },
        },
    ]
    container = {
        "name": "prefect-worker",
        "image": f"{w['image']['repository']}:{w['image']['prefectTag']}",
        "command": [
            *("prefect", "worker", "start", "--type", w["config"]["type"]),
            *("--pool", w["config"]["workPool"]),
        ],
        "env": env,
        "envFrom": [
            {"configMapRef": {"name": w["extraEnvVarsCM"]}},
            {"secretRef": {"name": w["extraEnvVarsSecret"]}},
        ],
        "volumeMounts": [{"name": "scratch", "mountPath": "/tmp"}, *w.get("extraVolumeMounts", [])],
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": values["fullnameOverride"], "namespace": namespace},
        "spec": {
            "containers": [container],
            "volumes": [{"name": "scratch", "emptyDir": {}}, *w.get("extraVolumes", [])],
        },
    }


def pod_environment(
    pod_spec: dict[str, Any], configmaps: list[dict[str, Any]], secrets: list[dict[str, Any]]
) -> dict[str, str]:
    """A container's environment as Kubernetes assembles it: envFrom, then env over it."""
    [container] = pod_spec["containers"]
    data = {("ConfigMap", d["metadata"]["name"]): d["data"] for d in configmaps}
    data.update({("Secret", d["metadata"]["name"]): d["stringData"] for d in secrets})
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", "configMapRef") if "configMapRef" in source else ("Secret", "secretRef")
        )
        env.update(data[(kind, source[ref]["name"])])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = data[("Secret", ref["name"])][ref["key"]]
    return env


def mounted_files(pod_spec: dict[str, Any], configmaps: list[dict[str, Any]]) -> dict[str, str]:
    """Path -> content of every ConfigMap file mounted in the pod's container."""
    [container] = pod_spec["containers"]
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    data = {d["metadata"]["name"]: d["data"] for d in configmaps}
    out = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for key, value in data[volume["configMap"]["name"]].items():
                out[f"{mount['mountPath']}/{key}"] = value
    return out


def joined_env(ctx: Context, tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "join.toml"
    join_info(ctx, POOL).write(path)
    worker_home = tmp_path / "remote"
    worker_home.mkdir()
    return joined_worker_env(JoinInfo.read(path).profile(worker_home), worker_home)


# -- schema validity -------------------------------------------------------------------------


@pytest.mark.parametrize("sections", SECTIONS)
def test_every_manifest_is_schema_valid(tmp_path: Path, sections: dict[str, Any]) -> None:
    ctx = platform(tmp_path, **sections)
    out = rendered(ctx, tmp_path / "out", namespace="team-a")
    manifests = documents(out[k8s.SECRET_FILE]) + documents(out[k8s.CONFIGMAP_FILE])
    kinds = sorted(d["kind"] for d in manifests)
    ca = ctx.config.proxy.tls == "internal"
    assert kinds == ["ConfigMap"] * (2 if ca else 1) + ["Secret", "Secret"]
    for manifest in manifests:
        assert manifest["metadata"]["namespace"] == "team-a"
        validate(manifest)
    # The pods they feed: the worker the chart runs, and a flow run's Job.
    values = yaml.safe_load(out[k8s.VALUES_FILE])
    validate(worker_pod(values, "team-a"))
    env = pods.platform_pod_env(ctx)
    template = pods.job_template(default_job_template(), env.settings, ca, "team-a")
    job = job_for(template, image="registry.example.com/flows:1")
    validate(job)
    assert job["metadata"]["namespace"] == "team-a"


def test_the_pinned_schema_version_is_strict() -> None:
    """The validator does reject a bad manifest (a typo'd field) at the pinned version."""
    bad = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "x"},
        "dataa": {"a": "b"},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


# -- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sections", SECTIONS)
def test_no_secret_value_in_any_file_but_the_secret(
    tmp_path: Path, sections: dict[str, Any]
) -> None:
    ctx = platform(tmp_path, **sections)
    out_dir = tmp_path / "out"
    out = rendered(ctx, out_dir)
    values = pods.secret_values(pods.worker_profile(ctx))
    assert len(values) == (4 if ctx.config.mlflow.enabled else 3)
    assert all(v in out[k8s.SECRET_FILE] for v in values)
    for name, text in out.items():
        if name != k8s.SECRET_FILE:
            assert not [v for v in values if v in text], f"{name} holds a credential"
    # The secret file alone is owner-only, written apart; the others are plain files.
    assert stat.S_IMODE((out_dir / k8s.SECRET_FILE).stat().st_mode) == 0o600
    # Nor does the pool's job template (it is stored in Prefect's database).
    env = pods.platform_pod_env(ctx)
    template = json.dumps(pods.job_template(default_job_template(), env.settings, True, "p"))
    assert not [v for v in values if v in template]


def test_the_secret_holds_only_the_credential_keys(tmp_path: Path) -> None:
    out = rendered(platform(tmp_path), tmp_path / "out")
    docs = documents(out[k8s.SECRET_FILE])
    env_secret = by_name(docs, "Secret", pods.SECRET_NAME)
    assert set(env_secret["stringData"]) == pods.SECRET_KEYS
    auth = by_name(docs, "Secret", pods.AUTH_SECRET_NAME)
    assert auth["stringData"] == {
        pods.AUTH_SECRET_KEY: env_secret["stringData"]["PREFECT_API_AUTH_STRING"]
    }


def test_a_credential_in_another_setting_is_refused(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    profile = pods.worker_profile(ctx)
    from dataclasses import replace

    leaky = replace(profile, s3_url=f"https://user:{profile.s3_secret_key}@s3.example.com")
    with pytest.raises(AssertionError, match="AWS_ENDPOINT_URL_S3"):
        pods.pod_env(leaky)


def test_flow_run_jobs_refer_to_the_auth_string_in_the_secret(tmp_path: Path) -> None:
    """prefect-kubernetes copies the worker's PREFECT_* settings into each Job; the worker's
    settings name the Secret so the auth string is a reference there, not a value."""
    out = rendered(platform(tmp_path), tmp_path / "out")
    env_cm = by_name(documents(out[k8s.CONFIGMAP_FILE]), "ConfigMap", pods.ENV_CONFIGMAP_NAME)
    data = env_cm["data"]
    secret = by_name(documents(out[k8s.SECRET_FILE]), "Secret", pods.SECRET_NAME)
    name = data["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"]
    key = data["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"]
    assert name == secret["metadata"]["name"] and key in secret["stringData"]
    assert key == "PREFECT_API_AUTH_STRING"


# -- parity with a joined worker -------------------------------------------------------------


@pytest.mark.parametrize("sections", SECTIONS)
def test_pods_get_every_setting_a_joined_worker_gets(
    tmp_path: Path, sections: dict[str, Any]
) -> None:
    ctx = platform(tmp_path, **sections)
    joined = joined_env(ctx, tmp_path)
    out = rendered(ctx, tmp_path / "out")
    configmaps = documents(out[k8s.CONFIGMAP_FILE])
    secrets = documents(out[k8s.SECRET_FILE])
    values = yaml.safe_load(out[k8s.VALUES_FILE])
    env = pods.platform_pod_env(ctx)
    ca = ctx.config.proxy.tls == "internal"
    job = job_for(pods.job_template(default_job_template(), env.settings, ca, "prefect"))
    for what, spec in [
        ("worker pod", worker_pod(values, "prefect")["spec"]),
        ("flow-run pod", job["spec"]["template"]["spec"]),
    ]:
        pod_env = pod_environment(spec, configmaps, secrets)
        missing = set(joined) - PATH_KEYS - set(pod_env)
        assert not missing, f"a {what} lacks {sorted(missing)}"
        mounted = mounted_files(spec, configmaps)
        for key, value in joined.items():
            if key in PATH_KEYS:
                continue
            if ca and value.endswith("ca.crt"):
                # The same CA, at the path its ConfigMap is mounted on.
                assert pod_env[key] == str(pods.CA_PATH), (what, key)
                assert mounted[pod_env[key]] == FAKE_CA, (what, key)
            else:
                assert pod_env[key] == value, (what, key)
        assert pod_env["PREFECT_HOME"] == pods.POD_PREFECT_HOME
        if not ca:
            assert not mounted, what


def test_a_deployment_env_adds_to_the_platform_env(tmp_path: Path) -> None:
    env = pods.platform_pod_env(platform(tmp_path))
    template = pods.job_template(default_job_template(), env.settings, True, "prefect")
    job = job_for(template, env={"EXTRA": "1", "FLOWYARD_CODE_BUCKET": "other"})
    [container] = job["spec"]["template"]["spec"]["containers"]
    got = {e["name"]: e["value"] for e in container["env"]}
    assert got["EXTRA"] == "1" and got["FLOWYARD_CODE_BUCKET"] == "other"
    assert got["PREFECT_API_URL"] == env.settings["PREFECT_API_URL"]
    assert container["envFrom"] == [{"secretRef": {"name": pods.SECRET_NAME}}]


# -- the chart's values ----------------------------------------------------------------------


def _leaves(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_leaves(value, path + "."))
        else:
            out[path] = value
    return out


@pytest.mark.parametrize("sections", SECTIONS)
def test_values_name_only_keys_the_chart_has(tmp_path: Path, sections: dict[str, Any]) -> None:
    ctx = platform(tmp_path, **sections)
    values = yaml.safe_load(rendered(ctx, tmp_path / "out")[k8s.VALUES_FILE])
    leaves = _leaves(values)
    unknown = set(leaves) - set(CHART_VALUES)
    assert not unknown, f"not values of prefect-worker: {sorted(unknown)}"
    for key, value in leaves.items():
        assert isinstance(value, CHART_VALUES[key]), key
    w = values["worker"]
    assert w["apiConfig"] in API_CONFIGS and w["apiConfig"] == "selfHostedServer"
    assert w["config"] == {"workPool": POOL, "type": "kubernetes"}
    assert w["selfHostedServerApiConfig"]["apiUrl"] == f"{ctx.config.proxy.url}/api"
    assert w["selfHostedServerApiConfig"]["basicAuth"]["existingSecret"] == pods.AUTH_SECRET_NAME
    assert w["image"]["prefectTag"].startswith("3.9.1-")


# -- the command -----------------------------------------------------------------------------


def test_cli_writes_the_files(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    write_config(ctx.config)
    write_secrets(ctx.paths.secrets_file, ctx.secrets)
    out = tmp_path / "k8s"
    args = ["render", "kubernetes", "--home", str(ctx.config.home), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [k8s.SECRET_FILE, k8s.CONFIGMAP_FILE, k8s.VALUES_FILE]
    )
    assert "helm install prefect-worker-cluster prefect/prefect-worker -n prefect" in result.output
    # Another namespace than the pool's: written there, with the way to move the pool too.
    result = CliRunner().invoke(app, [*args, "--namespace", "team-b"])
    assert result.exit_code == 0, result.output
    assert "team-b" in (out / k8s.SECRET_FILE).read_text()
    assert 'namespace = "team-b"' in result.output
    # A pool that is not of type kubernetes: a clear error, not a traceback.
    result = CliRunner().invoke(app, [*args, "--pool", "default"])
    assert result.exit_code == 1
    assert "not 'kubernetes'" in result.output


def test_no_kubernetes_pool_is_a_clear_error(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    config = ctx.config.model_validate({**ctx.config.model_dump(), "pools": [{"name": "default"}]})
    with pytest.raises(FlowyardError, match="No work pool of type 'kubernetes'"):
        k8s.kubernetes_pool(Context(config=config, secrets=ctx.secrets), None)


def test_a_missing_ca_is_a_clear_error(tmp_path: Path) -> None:
    ctx = platform(tmp_path)
    ctx.paths.ca_cert.unlink()
    with pytest.raises(FlowyardError, match="does not exist yet"):
        k8s.write_files(ctx, tmp_path / "out", POOL, "prefect")
