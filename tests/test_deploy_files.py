"""The files under deploy/: Dockerfile, Compose, Kubernetes, systemd units and redis.conf.

No container engine or cluster runs here, so these check what can be checked without one:
every file parses; every setting and command it names exists; the files agree with each
other and with the code (queue name, Redis credentials, grace periods that outlast the
longest delivery). Real tools run when present: redis-server loads redis.conf,
systemd-analyze verifies the units, `docker compose config` checks the Compose file.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import redis
import yaml

from conftest import EMAILQ, free_port, wait_for
from emailq.store.embedded_redis import redis_server_binary
from emailq.store.keys import Keys
from emailq.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SETTING_NAMES = {"EMAILQ_" + name.upper() for name in Settings.model_fields}
ROLES = {"worker", "serve", "flower"}


def deploy_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


def yaml_files() -> list[Path]:
    return [p for p in deploy_files() if p.suffix in (".yaml", ".yml")]


def load_yaml(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def compose(name: str = "docker-compose.yml") -> dict[str, Any]:
    return load_yaml(DEPLOY / name)[0]


COMPOSE_FILES = {"compose": "docker-compose.yml", "compose-sentinel": "docker-compose.sentinel.yml"}


def k8s(kind: str) -> list[dict[str, Any]]:
    docs = [d for p in sorted((DEPLOY / "kubernetes").glob("*.yaml")) for d in load_yaml(p)]
    return [d for d in docs if d.get("kind") == kind]


def k8s_one(kind: str) -> dict[str, Any]:
    (doc,) = k8s(kind)
    return doc


def containers(kind: str = "Deployment") -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], c) for d in k8s(kind) for c in d["spec"]["template"]["spec"]["containers"]]


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    words = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(w[0].upper(), w[1] if len(w) > 1 else "") for w in words]


def exec_form(instruction: str) -> list[str]:
    (args,) = [a for i, a in dockerfile() if i == instruction]
    # The shell form would make /bin/sh PID 1, and it does not pass SIGTERM on.
    assert args.startswith("["), f"Dockerfile: {instruction} is not in exec form"
    return json.loads(args)


def unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values]}}; keys may repeat."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}:{number}: not 'Key=value' in a section: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def units() -> list[Path]:
    return sorted((DEPLOY / "systemd").glob("*.service"))


def duration(text: str, units: dict[str, float]) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts and re.fullmatch(r"(\s*\d+(\.\d+)?\s*[a-z]*)+", text), f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


COMPOSE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "ms": 0.001}
SYSTEMD_UNITS = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, "ms": 0.001}


def settings(env: dict[str, Any]) -> Settings:
    """Settings from EMAILQ_* values, as a process given exactly these would read them."""
    fields = {k.removeprefix("EMAILQ_").lower(): v for k, v in env.items() if k.startswith("EMAILQ_") and v is not None}
    return Settings(_env_file=None, **fields)


def k8s_env() -> dict[str, str]:
    return {**k8s_one("ConfigMap")["data"], **k8s_one("Secret")["stringData"]}


def invocations() -> list[tuple[str, list[str]]]:
    """Every `emailq ...` argv that the deploy files run, with where it comes from."""
    entrypoint = exec_form("ENTRYPOINT")
    found = [("Dockerfile", entrypoint[1:] + exec_form("CMD"))]
    for label, file in COMPOSE_FILES.items():
        for name, service in compose(file)["services"].items():
            if service.get("build", {}).get("dockerfile") == "deploy/Dockerfile":
                found.append((f"{label} {name}", service.get("entrypoint", entrypoint)[1:] + service["command"]))
    for name, container in containers():
        if container["image"] == "emailq":
            argv = container.get("command", entrypoint) + container.get("args", [])
            assert Path(argv[0]).name == "emailq", f"{name} runs {argv[0]}"
            found.append((f"kubernetes {name}", argv[1:]))
    for path in units():
        argv = shlex.split(unit(path)["Service"]["ExecStart"][0].lstrip("-@+!:"))
        assert Path(argv[0]).name == "emailq" and argv[0].startswith("/"), f"{path.name} runs {argv[0]}"
        found.append((path.name, argv[1:]))
    return found


def command(path: list[str]) -> click.Command:
    """The `emailq` subcommand at `path`; xfail while a promised one is still unwritten."""
    from emailq.worker.commands.cli import cli

    cmd: click.Command = cli
    for depth, name in enumerate(path):
        sub = cmd.commands.get(name) if isinstance(cmd, click.Group) else None
        if sub is None:
            pytest.fail(f"`emailq {' '.join(path[: depth + 1])}` is not a command")
        cmd = sub
    return cmd


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_file_parses(path: Path) -> None:
    docs = load_yaml(path)
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_every_setting_named_in_deploy_exists() -> None:
    pattern = re.compile(r"\bEMAILQ_[A-Z0-9_]*[A-Z0-9]\b")
    named = {(p.relative_to(DEPLOY), n) for p in deploy_files() for n in pattern.findall(p.read_text())}
    assert {n for _, n in named} >= {"EMAILQ_REDIS_URL", "EMAILQ_ENDPOINT_URL", "EMAILQ_FLOWER_BASIC_AUTH"}
    assert sorted(f"{p}: {n}" for p, n in named if n not in SETTING_NAMES) == []


@pytest.mark.parametrize(("where", "argv"), invocations(), ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_every_emailq_invocation_is_a_real_command(where: str, argv: list[str]) -> None:
    path = argv[:1]
    cmd = command(path)
    while isinstance(cmd, click.Group):
        assert len(argv) > len(path), f"{where}: `emailq {' '.join(path)}` needs a subcommand"
        path = argv[: len(path) + 1]
        cmd = command(path)
    # Parses the flags as `emailq` would, without running anything: a wrong flag fails here.
    ctx = cmd.make_context(f"emailq {' '.join(path)}", argv[len(path) :])
    # `worker` and `flower` hand unknown flags on to Celery or Flower, which would only
    # refuse them at start: check those against what Celery and Flower accept.
    passed_on = [arg.split("=")[0] for arg in ctx.args if arg.startswith("-")]
    assert [flag for flag in passed_on if not passes_through(path[0], flag)] == [], where


def passes_through(name: str, flag: str) -> bool:
    if name == "worker":
        from celery.bin.worker import worker

        return any(flag in param.opts for param in worker.params)
    if name == "flower":
        from flower.options import options

        return flag.startswith("--") and flag[2:] in options
    return False


def test_every_emailq_command_mentioned_in_comments_exists() -> None:
    pattern = re.compile(r"(?:`|exec \S+ )emailq ([a-z][\w-]*)(?: ([a-z][\w-]*))?")
    mentioned = {m.groups() for p in deploy_files() for m in pattern.finditer(p.read_text())}
    assert mentioned
    for first, second in sorted(mentioned, key=str):
        if isinstance(command([first]), click.Group) and second:
            command([first, second])


def test_each_deployment_runs_every_role() -> None:
    runs = invocations()
    for where in (*(f"{label} " for label in COMPOSE_FILES), "kubernetes", "emailq-"):
        assert {argv[0] for w, argv in runs if w.startswith(where)} == ROLES, where


def test_dockerfile_builds_a_non_root_emailq_image() -> None:
    instructions = dockerfile()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    assert any(i == "RUN" and "pip install '.[server]'" in a for i, a in instructions)
    users = [a for i, a in instructions if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert exec_form("ENTRYPOINT") == ["emailq"]
    assert exec_form("CMD") == ["worker"]


def test_dockerfile_copies_everything_pip_needs_and_nothing_else() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {src.rstrip("/") for i, a in dockerfile() if i == "COPY" for src in a.split()[:-1]}
    # The source roots (producer/, worker/) hold the package folders package-dir names.
    folders = {folder.split("/")[0] for folder in project["tool"]["setuptools"]["package-dir"].values()}
    assert copied >= {"pyproject.toml", project["project"]["readme"], *folders}
    assert all((ROOT / src).exists() for src in copied)
    ignore = [line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    # An allowlist: everything excluded, then what is copied let back in (so .env stays out).
    assert ignore[0] == "*"
    assert copied <= {line[1:].rstrip("/") for line in ignore if line.startswith("!")}


def test_compose_worker_scales_and_the_other_services_exist() -> None:
    services = compose()["services"]
    assert {"redis", "worker", "ingest", "flower"} <= set(services)
    worker = services["worker"]
    for key in ("container_name", "ports", "hostname"):
        assert key not in worker, f"`--scale worker=N` fails with a fixed {key}"


def test_compose_redis_is_durable_and_password_protected() -> None:
    services = compose()["services"]
    redis_service = services["redis"]
    conf_mounts = [v.split(":") for v in redis_service["volumes"] if v.startswith("./redis.conf:")]
    assert conf_mounts and conf_mounts[0][1] in redis_service["command"]
    assert any(v.split(":")[1] == "/data" for v in redis_service["volumes"])
    assert redis_service["image"].startswith("redis:7")
    assert "test" in redis_service["healthcheck"]
    password = redis_service["command"][redis_service["command"].index("--requirepass") + 1]
    variable = re.fullmatch(r"\$\{(\w+):\?[^}]+\}", password).group(1)
    for name in ("worker", "ingest", "flower"):
        url = services[name]["environment"]["EMAILQ_REDIS_URL"]
        assert url.startswith(f"redis://:${{{variable}:") and "@redis:6379/" in url, name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_requires_flower_auth_and_the_endpoint() -> None:
    services = compose()["services"]
    auth = services["flower"]["environment"]["EMAILQ_FLOWER_BASIC_AUTH"]
    assert re.fullmatch(r"\$\{EMAILQ_FLOWER_BASIC_AUTH:\?.+\}", auth)
    assert re.fullmatch(r"\$\{EMAILQ_ENDPOINT_URL:\?.+\}", services["worker"]["environment"]["EMAILQ_ENDPOINT_URL"])
    # Secrets go only where they are used.
    assert "EMAILQ_FLOWER_BASIC_AUTH" not in services["worker"]["environment"]
    assert "EMAILQ_ENDPOINT_AUTHORIZATION" not in services["flower"]["environment"]


def test_worker_grace_periods_outlast_the_longest_delivery() -> None:
    longest = settings({}).longest_delivery_seconds()
    grace = duration(compose()["services"]["worker"]["stop_grace_period"], COMPOSE_UNITS)
    assert grace > longest, f"compose: {grace}s <= {longest}s"
    worker_unit = unit(DEPLOY / "systemd" / "emailq-worker@.service")["Service"]
    stop = duration(worker_unit["TimeoutStopSec"][0], SYSTEMD_UNITS)
    assert stop > longest, f"systemd: {stop}s <= {longest}s"
    (worker,) = [d for d in k8s("Deployment") if d["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker"]
    k8s_longest = settings(k8s_env()).longest_delivery_seconds()
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > k8s_longest


def test_kubernetes_settings_are_valid() -> None:
    secrets = ("ENDPOINT_AUTHORIZATION", "REDIS_URL", "FLOWER_BASIC_AUTH", "INGEST_AUTHORIZATION")
    assert {f"EMAILQ_{name}" for name in secrets} <= set(k8s_one("Secret")["stringData"])
    settings(k8s_env())  # raises, naming the field, if a value is out of range or inconsistent


def test_keda_scales_the_worker_on_both_lanes() -> None:
    scaled = k8s_one("ScaledObject")["spec"]
    assert all(trigger["type"] == "redis" for trigger in scaled["triggers"])
    config = k8s_one("ConfigMap")["data"]
    queue = config.get("EMAILQ_QUEUE", Settings.model_fields["queue"].default)
    keys = Keys(queue, prefix=config.get("EMAILQ_REDIS_KEY_PREFIX", ""))
    assert [t["metadata"]["listName"] for t in scaled["triggers"]] == [keys.interactive, keys.bulk]
    assert all(int(t["metadata"]["listLength"]) > 0 for t in scaled["triggers"])
    assert scaled["minReplicaCount"] >= 1  # only a running worker restores a dead one's emails
    target = [d for d in k8s("Deployment") if d["metadata"]["name"] == scaled["scaleTargetRef"]["name"]]
    assert target and target[0]["spec"]["template"]["spec"]["containers"][0]["args"][0] == "worker"
    assert "replicas" not in target[0]["spec"], "a fixed count fights the autoscaler"


def test_keda_reaches_the_same_redis_as_the_workers() -> None:
    auth = k8s_one("TriggerAuthentication")
    triggers = k8s_one("ScaledObject")["spec"]["triggers"]
    assert all(t["authenticationRef"]["name"] == auth["metadata"]["name"] for t in triggers)
    trigger = triggers[0]
    secret = k8s_one("Secret")
    refs = auth["spec"]["secretTargetRef"]
    assert all(ref["name"] == secret["metadata"]["name"] for ref in refs)
    params = {ref["parameter"]: secret["stringData"][ref["key"]] for ref in refs}
    url = urlsplit(secret["stringData"]["EMAILQ_REDIS_URL"])
    assert params["address"] == f"{url.hostname}:{url.port or 6379}"
    assert params["password"] == url.password
    assert trigger["metadata"].get("databaseIndex", "0") == (url.path.strip("/") or "0")


def test_kubernetes_references_resolve() -> None:
    secret, config = k8s_one("Secret"), k8s_one("ConfigMap")
    for name, container in containers():
        for ref in container.get("envFrom", []):
            assert ref["configMapRef"]["name"] == config["metadata"]["name"], name
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"], (name, ref)
    for deployment in k8s("Deployment"):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for service in k8s("Service"):
        selector = service["spec"]["selector"].items()
        (target,) = [d for d in k8s("Deployment") if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
        ports = {p.get("name") for c in target["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"]), service["metadata"]["name"]
    listed = set(k8s_one("Kustomization")["resources"])
    assert listed == {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}


def test_probes_ask_paths_that_exist() -> None:
    from flower.urls import handlers

    script = (
        "from emailq.ingest.app import create_app; from emailq.settings import Settings;"
        "app = create_app(Settings(_env_file=None, redis_url='redis://127.0.0.1:9/0'));"
        "print(' '.join(r.path for r in app.routes))"
    )
    # In a child process: building the app registers metrics collectors process-wide.
    routes = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    ingest_paths = set(routes.stdout.split())
    flower_patterns = [getattr(h, "regex", None) or h[0] for h in handlers]  # URLSpec or tuple
    flower_paths = {p for p in ("/healthcheck", "/metrics") if any(re.fullmatch(r, p) for r in flower_patterns)}
    probes = {name: c for name, c in containers()}
    ingest, flower = probes["emailq-ingest"], probes["emailq-flower"]
    assert (ingest["readinessProbe"]["httpGet"]["path"], ingest["livenessProbe"]["httpGet"]["path"]) == ("/readyz", "/healthz")
    assert {"/readyz", "/healthz", "/metrics"} <= ingest_paths
    assert {flower["readinessProbe"]["httpGet"]["path"], flower["livenessProbe"]["httpGet"]["path"]} <= flower_paths
    for name, paths in (("ingest", ingest_paths), ("flower", flower_paths)):
        test = " ".join(compose()["services"][name]["healthcheck"]["test"])
        assert re.search(r"127\.0\.0\.1:\d+(/\w+)", test).group(1) in paths, name


def test_flower_login_comes_from_the_secret() -> None:
    (flower,) = [c for name, c in containers() if name == "emailq-flower"]
    (auth,) = [v for v in flower["env"] if v["name"] == "EMAILQ_FLOWER_BASIC_AUTH"]
    ref = auth["valueFrom"]["secretKeyRef"]
    assert ref["name"] == k8s_one("Secret")["metadata"]["name"] and not ref.get("optional")


@pytest.mark.parametrize("path", units(), ids=lambda p: p.name)
def test_systemd_unit_runs_emailq_safely(path: Path) -> None:
    service = unit(path)["Service"]
    assert service["EnvironmentFile"] == ["/etc/emailq/emailq.env"]
    assert service["Restart"] == ["always"] and service["KillSignal"] == ["SIGTERM"]
    assert service["User"][0] not in ("root", "0")
    assert service["NoNewPrivileges"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    assert unit(path)["Install"]["WantedBy"]


def test_systemd_worker_is_a_template_with_unique_node_names() -> None:
    names = {p.name for p in units()}
    assert {"emailq-worker@.service", "emailq-ingest.service", "emailq-flower.service"} <= names
    exec_start = unit(DEPLOY / "systemd" / "emailq-worker@.service")["Service"]["ExecStart"][0]
    assert "%i" in exec_start, "instances need Celery node names of their own"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at the emailq of this venv.
    for path in units():
        text = re.sub(r"/\S+/emailq\b", EMAILQ, path.read_text())
        (tmp_path / path.name.replace("@.", "@1.")).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(str(p) for p in tmp_path.iterdir())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = [line for line in (result.stdout + result.stderr).splitlines() if "emailq" in line]
    assert result.returncode == 0 and output == [], result.stdout + result.stderr


def redis_conf() -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            directives.setdefault(key.lower(), []).append(value.strip())
    return directives


def test_redis_conf_keeps_every_email() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == ["yes"]
    assert conf["appendfsync"][-1] in ("everysec", "always")
    assert conf["maxmemory-policy"] == ["noeviction"]
    assert "requirepass" not in conf, "the password belongs in the environment, not a shared file"


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_redis_server_runs_with_redis_conf(tmp_path: Path) -> None:
    # The container's /data does not exist here; everything else is the file as shipped.
    conf = tmp_path / "redis.conf"
    conf.write_text(re.sub(r"(?m)^dir .*$", f"dir {tmp_path}", (DEPLOY / "redis.conf").read_text()))
    port = free_port()
    server = subprocess.Popen(
        [redis_server_binary(), str(conf), "--port", str(port), "--requirepass", "pw"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        client = redis.Redis(port=port, password="pw")
        wait_for(lambda: server.poll() is not None or _answers(client), 10, "redis-server with deploy/redis.conf")
        assert server.poll() is None, server.stdout.read().decode()
        got = {key: client.config_get(key)[key] for key in ("appendonly", "appendfsync", "maxmemory-policy")}
        assert got == {"appendonly": "yes", "appendfsync": "everysec", "maxmemory-policy": "noeviction"}
    finally:
        server.terminate()
        server.wait(10)


@pytest.mark.skipif(
    shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode,
    reason="docker compose is not installed",
)
@pytest.mark.parametrize("file", COMPOSE_FILES.values())
def test_docker_compose_accepts_the_file(tmp_path: Path, file: str) -> None:
    required = {
        "REDIS_PASSWORD": "pw",
        "EMAILQ_ENDPOINT_URL": "https://example.com/send",
        "EMAILQ_INGEST_AUTHORIZATION": "Bearer x",
        "EMAILQ_FLOWER_BASIC_AUTH": "admin:pw",
    }
    env = {k: v for k, v in os.environ.items() if k not in required}

    def config(values: dict[str, str]) -> subprocess.CompletedProcess:
        env_file = tmp_path / "compose.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        return subprocess.run(
            ["docker", "compose", "--env-file", str(env_file), "-f", str(DEPLOY / file), "config", "--quiet"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    assert config(required).returncode == 0
    without_auth = config({k: v for k, v in required.items() if k != "EMAILQ_FLOWER_BASIC_AUTH"})
    assert without_auth.returncode != 0 and "EMAILQ_FLOWER_BASIC_AUTH" in without_auth.stderr


def sentinel_compose_env() -> dict[str, Any]:
    """The emailq settings of docker-compose.sentinel.yml, with its ${...} filled in."""
    values = {"REDIS_PASSWORD": "pw", "EMAILQ_REDIS_MIN_REPLICAS": "1", "EMAILQ_LOG_FORMAT": "json"}

    def fill(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return re.sub(r"\$\{(\w+)(?::[-?][^}]*)?\}", lambda m: values[m.group(1)], value)

    return {k: fill(v) for k, v in compose("docker-compose.sentinel.yml")["x-emailq-settings"].items()}


def test_sentinel_compose_settings_name_its_sentinels_and_service() -> None:
    file = compose("docker-compose.sentinel.yml")
    services = file["services"]
    env = sentinel_compose_env()
    parsed = settings(env)  # raises, naming the field, if the URL or the master is wrong
    sentinels = {name: s for name, s in services.items() if s.get("command", [None])[0] == "sh"}
    assert len(sentinels) == 3, "a quorum of 2 needs three Sentinels"
    assert {host for host, _ in parsed.redis_url.sentinels} == set(sentinels)
    assert {s["environment"]["SENTINEL_MASTER"] for s in sentinels.values()} == {parsed.redis_sentinel_master}
    assert parsed.redis_min_replicas >= 1
    servers = {name: s for name, s in services.items() if s.get("command", [None])[0] == "redis-server"}
    replicas = {name for name, s in servers.items() if "--replicaof" in s["command"]}
    assert len(servers) - len(replicas) == 1 and len(replicas) > parsed.redis_min_replicas, (
        "one primary, and more replicas than must confirm, so that one may be down"
    )
    primary = (set(servers) - replicas).pop()
    assert {s["environment"]["SENTINEL_PRIMARY"] for s in sentinels.values()} == {primary}
    for name, server in servers.items():
        argv = server["command"]
        # Any of them may be primary after a failover: each serves and replicates with
        # the password, and announces a name that resolves.
        assert argv[argv.index("--requirepass") + 1] == argv[argv.index("--masterauth") + 1]
        assert argv[argv.index("--replica-announce-ip") + 1] == server["hostname"] == name


def test_sentinel_sh_writes_a_config_redis_sentinel_runs(tmp_path: Path) -> None:
    port = free_port()
    # A stand-in for the image's redis-sentinel: the real server, on a free port.
    fake = tmp_path / "bin" / "redis-sentinel"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nexec {redis_server_binary()} "$1" --sentinel --port {port} --bind 127.0.0.1\n')
    fake.chmod(0o755)
    env = {
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "SENTINEL_CONF": str(tmp_path / "sentinel.conf"),
        "SENTINEL_MASTER": "emailq",
        "SENTINEL_PRIMARY": "127.0.0.1",
        "REDIS_PASSWORD": "pw",
        "DOWN_AFTER": "5000",
    }
    process = subprocess.Popen(["sh", str(DEPLOY / "sentinel.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis(port=port)
        wait_for(lambda: process.poll() is not None or _answers(client), 10, "the Sentinel of sentinel.sh")
        assert process.poll() is None, process.stdout.read().decode()
        master = client.sentinel_master("emailq")
        assert master["port"] == 6379 and master["down-after-milliseconds"] == 5000
    finally:
        process.terminate()
        process.wait(10)
