"""Deployment files, checked by parsing them (there is no Docker engine here).

docker-compose.yml, deploy/Dockerfile and deploy/k8s/**/*.yaml must agree with
the CLI (``services.cli.build_parser()`` once it exists, else the documented
contract), with ``services.settings.Settings`` and with each other.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

from services.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S = DEPLOY / "k8s"
README = DEPLOY / "README.md"
ENV_EXAMPLE = DEPLOY / "env.example"

APP_SERVICES = ("api", "worker-cpu", "worker-io")
REQUIRED_SERVICES = (*APP_SERVICES, "redis", "minio", "createbucket")
# Secrets compose must refuse to default (``${VAR:?...}``).
REQUIRED_HOST_VARS = ("VOR_API_KEYS", "VOR_WEBHOOK_SECRET")
# Container env that is not a Settings field but legitimately set.
NON_VOR_ENV = {
    "SVOR_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_DEFAULT_REGION",
}
# The CLI contract, used while services.cli.build_parser() does not exist.
CONTRACT_FLAGS = {
    "api": {"--host", "--port"},
    "worker": {"--queues", "--concurrency", "--pool"},
    "serve": {"--host", "--port", "--workers", "--data-dir"},
}
QUEUES = {"cpu", "io"}
POOLS = {"prefork", "threads"}
API_PORT = 8000


# ---------------------------------------------------------------- loading


@cache
def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    return _compose()["services"]


@cache
def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), f"{path}: not a mapping"
                docs.append((path, doc))
    return docs


def _k8s(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == kind}


@cache
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or (stripped.startswith("#") and not pending):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends in a continuation"
    out = []
    for line in lines:
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    return out


@cache
def _env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


# ------------------------------------------------------------------ CLI


@cache
def _cli_parser() -> argparse.ArgumentParser | None:
    try:
        cli = importlib.import_module("services.cli.main")
    except ModuleNotFoundError as exc:
        if exc.name in ("services.cli", "services.cli.main"):
            return None
        raise
    build = getattr(cli, "build_parser", None)
    if build is None:
        return None
    parser = build()
    assert isinstance(parser, argparse.ArgumentParser)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("services.cli.build_parser() has no subcommands")


def _flags(args: list[str]) -> dict[str, str]:
    """``--flag value`` / ``--flag=value`` pairs after the subcommand."""
    out: dict[str, str] = {}
    i = 1
    while i < len(args):
        tok = args[i]
        assert tok.startswith("--"), f"unexpected positional {tok!r} in {args}"
        if "=" in tok:
            key, _, value = tok.partition("=")
        else:
            assert i + 1 < len(args), f"{tok} has no value in {args}"
            key, value = tok, args[i + 1]
            i += 1
        out[key] = value
        i += 1
    return out


def _check_vor_command(args: list[str], where: str) -> dict[str, str]:
    """Assert ``vor <args>`` is a valid command line; return its flags."""
    assert args and isinstance(args, list), f"{where}: command must be a list, got {args!r}"
    assert all(isinstance(a, str) for a in args), f"{where}: {args!r}"
    sub = args[0]
    flags = _flags(args)
    parser = _cli_parser()
    if parser is None:
        assert sub in CONTRACT_FLAGS, f"{where}: {sub!r} is not a vor subcommand"
        unknown = set(flags) - CONTRACT_FLAGS[sub]
        assert not unknown, f"{where}: vor {sub} has no {sorted(unknown)}"
    else:
        subs = _subcommands(parser)
        assert sub in subs, f"{where}: {sub!r} not in vor's subcommands {sorted(subs)}"
        known = {opt for a in subs[sub]._actions for opt in a.option_strings}
        unknown = set(flags) - known
        assert not unknown, f"{where}: vor {sub} has no {sorted(unknown)}"
        try:
            parser.parse_args(args)
        except SystemExit as exc:  # argparse reports and exits on bad input
            pytest.fail(f"{where}: `vor {' '.join(args)}` is rejected by the CLI ({exc})")
    if sub == "worker":
        assert set(flags["--queues"].split(",")) <= QUEUES, where
        assert flags.get("--pool", "prefork") in POOLS, where
        if "--concurrency" in flags:
            assert int(flags["--concurrency"]) >= 1, where
    if "--port" in flags:
        assert int(flags["--port"]) == API_PORT, where
    return flags


def _container_args(container: dict[str, Any]) -> list[str]:
    # The image's ENTRYPOINT is `vor`; manifests must pass only args.
    assert "command" not in container, "override args, not the vor entrypoint"
    return container["args"]


# -------------------------------------------------------------- settings


def _check_env_names(names: set[str], where: str) -> None:
    fields = set(Settings.model_fields)
    for name in names:
        if name in NON_VOR_ENV:
            continue
        assert name.startswith("VOR_"), f"{where}: {name} is not a vor setting"
        field = name.removeprefix("VOR_").lower()
        assert field in fields, f"{where}: {name} is not a field of Settings ({field})"


def _check_settings_accept(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("VOR_") or key == "SVOR_API_KEY":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    settings.tenants_by_key()
    settings.allowed_networks()
    return settings


_INTERP = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: str, host: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in host:
            return host[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            pytest.fail(f"${{{name}}} is required and deploy/env.example lacks it")
        return ""

    return _INTERP.sub(sub, value)


def _duration_s(text: str) -> float:
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)", str(text))
    assert parts and "".join(n + u for n, u in parts) == str(text), f"bad duration {text!r}"
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    for number, unit in parts:
        total += float(number) * scale[unit]
    return total


def _redis_flags(args: list[str]) -> dict[str, str]:
    assert args[0] == "redis-server", args
    out = {}
    for i, tok in enumerate(args[1:], start=1):
        if tok.startswith("--"):
            out[tok] = str(args[i + 1])
    return out


# ============================================================== compose


def test_compose_has_the_services() -> None:
    services = _services()
    missing = set(REQUIRED_SERVICES) - set(services)
    assert not missing, f"docker-compose.yml lacks {sorted(missing)}"


def test_compose_app_services_build_the_one_image() -> None:
    services = _services()
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build["context"] == ".", name
        assert (ROOT / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert services[name].get("restart") in {"unless-stopped", "always", "on-failure"}, name
    assert len({services[n].get("image") for n in APP_SERVICES}) == 1


def test_compose_commands_are_real_vor_commands() -> None:
    services = _services()
    api = _check_vor_command(services["api"]["command"], "compose api")
    assert api.get("--host") == "0.0.0.0"
    queues: dict[str, dict[str, str]] = {}
    for name in ("worker-cpu", "worker-io"):
        cmd = services[name]["command"]
        assert cmd[0] == "worker", name
        flags = _check_vor_command(cmd, f"compose {name}")
        queues[flags["--queues"]] = flags
    assert set(",".join(queues).split(",")) == QUEUES
    assert queues["cpu"]["--pool"] == "prefork"
    assert queues["io"]["--pool"] == "threads"
    assert int(queues["io"]["--concurrency"]) == 16


def test_compose_api_port_and_dependencies() -> None:
    services = _services()
    api = services["api"]
    assert any(str(p).endswith(f":{API_PORT}") for p in api["ports"]), api["ports"]
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["createbucket"]["condition"] == "service_completed_successfully", name


def test_compose_workers_stop_gracefully() -> None:
    services = _services()
    for name in ("worker-cpu", "worker-io"):
        assert _duration_s(services[name]["stop_grace_period"]) >= 60, name


def test_compose_env_is_shared_and_known(monkeypatch: pytest.MonkeyPatch) -> None:
    text = COMPOSE.read_text()
    assert re.search(r"^x-vor-env:\s*&vor-env\b", text, re.M), "no x-vor-env anchor"
    services = _services()
    envs = [services[n]["environment"] for n in APP_SERVICES]
    assert all(isinstance(e, dict) for e in envs), "use mapping-style environment"
    assert envs[0] == envs[1] == envs[2] == _compose()["x-vor-env"]
    env = envs[0]
    _check_env_names(set(env), "compose")
    assert env["VOR_REDIS_URL"] == "redis://redis:6379/0"
    assert env["VOR_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["VOR_STORAGE_URL"].startswith("s3://")
    for name in REQUIRED_HOST_VARS:
        assert re.fullmatch(rf"\$\{{{name}:\?.+\}}", str(env[name])), (
            f"{name} must be ${{{name}:?...}} (no unsafe default)"
        )
    # With deploy/env.example as the host env, Settings accepts every value.
    host = _env_example()
    resolved = {k: _interpolate(str(v), host) for k, v in env.items() if v is not None}
    settings = _check_settings_accept(resolved, monkeypatch)
    assert settings.tenants_by_key(), "VOR_API_KEYS in deploy/env.example is empty"


def test_compose_redis_is_durable() -> None:
    redis = _services()["redis"]
    assert str(redis["image"]).split(":")[0] == "redis"
    flags = _redis_flags([str(a) for a in redis["command"]])
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    named = str(redis["volumes"][0]).split(":")[0]
    assert named in _compose()["volumes"]


def test_compose_minio_and_bucket() -> None:
    services = _services()
    minio = services["minio"]
    assert str(minio["image"]).startswith("minio/minio")
    assert minio["command"][:2] == ["server", "/data"]
    assert "healthcheck" in minio and "volumes" in minio
    create = services["createbucket"]
    assert str(create["image"]).startswith("minio/mc")
    assert create["depends_on"]["minio"]["condition"] == "service_healthy"
    script = (
        " ".join(map(str, create.get("entrypoint", [])))
        + " "
        + " ".join(map(str, create["command"]))
    )
    assert "mc alias set local http://minio:9000" in script
    bucket = services["api"]["environment"]["VOR_STORAGE_URL"].removeprefix("s3://").split("/")[0]
    assert f"mc mb --ignore-existing local/{bucket}" in script
    assert str(create.get("restart", "no")) == "no"


# ============================================================ Dockerfile


def test_dockerfile() -> None:
    instrs = _dockerfile()
    by: dict[str, list[str]] = {}
    for instr, args in instrs:
        by.setdefault(instr, []).append(args)
    assert by["FROM"] == ["python:3.11-slim"]
    assert json.loads(by["ENTRYPOINT"][-1]) == ["vor"]
    cmd = json.loads(by["CMD"][-1])
    assert cmd == ["api"]
    _check_vor_command(cmd, "Dockerfile CMD")
    assert any(re.search(r"\bpip install (\S+ )*\.(\s|$)", run) for run in by["RUN"])
    user = by["USER"][-1].split(":")[0]
    assert user not in {"root", "0"}
    # The user must be the last one, set before the entrypoint runs.
    assert [i for i, _ in instrs].index("USER") < [i for i, _ in instrs].index("ENTRYPOINT")
    assert str(API_PORT) in by["EXPOSE"][-1].split()
    health = by["HEALTHCHECK"][-1]
    assert "python" in health and "/healthz" in health and str(API_PORT) in health
    assert "curl" not in health


def test_dockerignore_keeps_local_state_out() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".venv"):
        assert entry in ignore
    assert "README.md" not in ignore  # pyproject.toml's readme


# ============================================================ Kubernetes


def test_k8s_manifests_parse_and_share_a_namespace() -> None:
    docs = _k8s_docs()
    assert docs, "no manifests under deploy/k8s"
    namespaces = _k8s("Namespace")
    assert list(namespaces) == ["vor"]
    for path, doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), path
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "vor", (path, doc["metadata"]["name"])
    kinds = {d["kind"] for _, d in docs}
    assert {"ConfigMap", "Secret", "Deployment", "Service", "StatefulSet"} <= kinds


def test_k8s_secret_template_is_not_applied_with_the_rest() -> None:
    # `kubectl apply -f deploy/k8s/` does not recurse: keep the template deeper.
    for path, doc in _k8s_docs():
        if doc["kind"] == "Secret":
            assert path.parent != K8S, f"{path}: a Secret template would be applied"


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def test_k8s_selectors_match_pod_labels() -> None:
    for kind in ("Deployment", "StatefulSet"):
        for name, w in _k8s(kind).items():
            labels = w["spec"]["template"]["metadata"]["labels"]
            selector = w["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), f"{kind} {name}"


def test_k8s_env_is_known_and_resolvable(monkeypatch: pytest.MonkeyPatch) -> None:
    configmaps = _k8s("ConfigMap")
    secrets = _k8s("Secret")
    env: dict[str, str] = {}
    for name, w in _k8s("Deployment").items():
        for c in _pod_spec(w)["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    ref = src["configMapRef"]["name"]
                    assert ref in configmaps, f"{name}: no ConfigMap {ref}"
                    env.update(configmaps[ref]["data"])
                if "secretRef" in src:
                    ref = src["secretRef"]["name"]
                    assert ref in secrets, f"{name}: no Secret {ref} (template)"
                    env.update(secrets[ref].get("stringData", {}))
            for var in c.get("env", []):
                if "value" in var:
                    env[var["name"]] = var["value"]
    _check_env_names(set(env), "k8s")
    assert all(isinstance(v, str) for v in env.values()), "quote ConfigMap values"
    assert env["VOR_REDIS_URL"].startswith("redis://redis:6379")
    assert env["VOR_STORAGE_URL"].startswith("s3://")
    _check_settings_accept(env, monkeypatch)


def test_k8s_commands_and_queues() -> None:
    deployments = _k8s("Deployment")
    images = set()
    queues: dict[str, dict[str, str]] = {}
    for name, w in deployments.items():
        (container,) = _pod_spec(w)["containers"]
        images.add(container["image"])
        flags = _check_vor_command(_container_args(container), f"k8s {name}")
        if container["args"][0] == "worker":
            queues[flags["--queues"]] = flags
            assert _pod_spec(w)["terminationGracePeriodSeconds"] >= 60, name
    assert len(images) == 1, f"vor Deployments use different images: {images}"
    assert set(",".join(queues).split(",")) == QUEUES
    assert queues["cpu"]["--pool"] == "prefork"
    assert queues["io"]["--pool"] == "threads"
    assert int(queues["io"]["--concurrency"]) == 16


def _api() -> tuple[dict[str, Any], dict[str, Any]]:
    apis = [
        w for w in _k8s("Deployment").values() if _pod_spec(w)["containers"][0]["args"][0] == "api"
    ]
    assert len(apis) == 1
    return apis[0], _pod_spec(apis[0])["containers"][0]


def test_k8s_api_probes_and_service() -> None:
    deployment, container = _api()
    assert deployment["spec"]["replicas"] >= 2
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert API_PORT in ports.values()

    def port_of(ref: int | str) -> int:
        return ports[ref] if isinstance(ref, str) else ref

    ready = container["readinessProbe"]["httpGet"]
    live = container["livenessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and port_of(ready["port"]) == API_PORT
    assert live["path"] == "/healthz" and port_of(live["port"]) == API_PORT

    labels = deployment["spec"]["template"]["metadata"]["labels"]
    services = [
        s for s in _k8s("Service").values() if s["spec"]["selector"].items() <= labels.items()
    ]
    assert len(services) == 1, "one Service must select the api pods"
    (svc_port,) = services[0]["spec"]["ports"]
    assert port_of(svc_port["targetPort"]) == API_PORT


def test_k8s_redis_is_durable() -> None:
    (redis,) = _k8s("StatefulSet").values()
    (container,) = _pod_spec(redis)["containers"]
    assert str(container["image"]).split(":")[0] == "redis"
    args = [str(a) for a in container.get("command", []) + container.get("args", [])]
    flags = _redis_flags(args)
    assert flags["--appendonly"] == "yes"
    assert flags["--maxmemory-policy"] == "noeviction"
    claims = {c["metadata"]["name"] for c in redis["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert any(mounts.get(c) == "/data" for c in claims)
    service = _k8s("Service")[redis["spec"]["serviceName"]]
    assert service["spec"]["ports"][0]["port"] == 6379
    assert service["spec"]["selector"].items() <= (
        redis["spec"]["template"]["metadata"]["labels"].items()
    )


# ================================================================ README


def test_readme_documents_every_variable() -> None:
    readme = README.read_text()
    names = set(_services()["api"]["environment"])
    for _, doc in _k8s_docs():
        if doc["kind"] in ("ConfigMap", "Secret"):
            names |= set(doc.get("data") or {}) | set(doc.get("stringData") or {})
    missing = sorted(n for n in names if f"`{n}`" not in readme and n not in readme)
    assert not missing, f"deploy/README.md does not explain {missing}"
    assert "--scale worker-cpu=" in readme
    assert "kubectl apply -f deploy/k8s/" in readme
