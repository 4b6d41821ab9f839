"""The deployment files (docker/*.Dockerfile, docker-compose.yml) agree with the code.

No Docker engine needed: the files are parsed, and every `python -m` command they run goes
through that program's real argparse parser and settings model (servers and training are
stubbed out), so a renamed flag, env variable, port or route fails here, not in a container.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = {p.name.removesuffix(".Dockerfile"): p for p in sorted(DOCKER.glob("*.Dockerfile"))}
SERVERS = {"reward_service": "REWARD_", "surrogate_service": "SURROGATE_"}
PREFIXES = {"REWARD_": "reward_service", "SURROGATE_": "surrogate_service", "TRAINER_": "trainer"}
GPU_SERVICES = {"reward-imagereward", "surrogate-service", "trainer"}
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "API_KEY")


# ----------------------------------------------------------------------------- parsing helpers


def parse_dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def final_stage(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (k, _) in enumerate(instrs) if k == "FROM")
    return instrs[last:]


def dockerfile_env(instrs: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for k, args in instrs:
        if k == "ENV":
            for tok in shlex.split(args):
                key, sep, val = tok.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=VALUE form"
                env[key] = val
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), args
    return value


def image_argv(instrs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    stage = final_stage(instrs)
    entry = [exec_form(a) for k, a in stage if k == "ENTRYPOINT"]
    cmd = [exec_form(a) for k, a in stage if k == "CMD"]
    return (entry[-1] if entry else []), (cmd[-1] if cmd else [])


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?([-?])([^}]*))?\}")


def interpolate(value):
    """Compose variable substitution with an empty environment: ${X:-default} -> default."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: m.group(3) if m.group(2) == "-" else "", value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def python_commands(argv: list[str]) -> list[tuple[str, list[str]]]:
    """Every `python -m MODULE ARGS` in an argv, including inside `sh -c "a && b"`."""
    if len(argv) >= 3 and argv[0] in ("sh", "/bin/sh", "bash", "/bin/bash") and argv[1] == "-c":
        found = []
        for part in re.split(r"&&|\|\||;", " ".join(argv[2:])):
            words = shlex.split(part)
            if words and words[0] == "exec":
                words = words[1:]
            found += python_commands(words)
        return found
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return [(argv[2], argv[3:])]
    return []


def healthcheck_url(test) -> str | None:
    text = " ".join(test) if isinstance(test, list) else str(test)
    m = re.search(r"https?://(?:127\.0\.0\.1|localhost):\d+/[\w/]*", text)
    return m.group(0) if m else None


# ----------------------------------------------------------------------------- the programs


class _Captured(Exception):  # noqa: N818 - a control-flow signal, not an error
    def __init__(self, value):
        self.value = value


def _clean_env(monkeypatch, env: dict[str, str]) -> None:
    for key in list(os.environ):
        if key.startswith(tuple(PREFIXES)):
            monkeypatch.delenv(key)
    for key, val in env.items():
        if key.startswith(tuple(PREFIXES)):
            monkeypatch.setenv(key, val)


def run_module(module: str, args: list[str], env: dict[str, str], monkeypatch):
    """Run MODULE's real main(args) with env, up to the point it would serve or train.

    Returns the validated settings object (RewardSettings, SurrogateSettings, TrainConfig) or,
    for `trainer demo`, the demo's arguments. argparse errors raise SystemExit (a failure)."""
    _clean_env(monkeypatch, env)
    monkeypatch.setattr(logging, "basicConfig", lambda **_: None)
    if module in SERVERS:
        main_mod = __import__(f"{module}.__main__", fromlist=["main"])

        def fake_create_app(settings):
            raise _Captured(settings)

        monkeypatch.setattr(main_mod, "create_app", fake_create_app)
        monkeypatch.setattr(main_mod.uvicorn, "run", lambda *a, **k: pytest.fail("would serve"))
    elif module == "trainer":
        import trainer.__main__ as main_mod
        import trainer.demo
        from trainer.config import TrainConfig, from_args

        def fake_from_args(model, ns, **extra):
            try:
                cfg = from_args(TrainConfig, ns, **extra)
            except ValueError as e:
                pytest.fail(f"trainer config rejected: {e}")
            raise _Captured(cfg)

        def fake_demo(out, reward, overrides):
            raise _Captured({"out": out, "reward": reward, "overrides": overrides})

        monkeypatch.setattr(main_mod, "from_args", fake_from_args)
        monkeypatch.setattr(trainer.demo, "demo", fake_demo)
    else:
        pytest.fail(f"unknown module {module!r} in a deployment file")
    try:
        main_mod.main(args)
    except _Captured as c:
        return c.value
    pytest.fail(f"python -m {module} {' '.join(args)} did not reach its settings")


_ROUTES: dict[str, set[str]] = {}


def routes(module: str) -> set[str]:
    """Paths of the app `module` serves, built without loading any model (no lifespan)."""
    if module not in _ROUTES:
        if module == "reward_service":
            from reward_service.app import create_app
            from reward_service.settings import RewardSettings

            app = create_app(RewardSettings(rewards=[]))
        else:
            from surrogate_service.app import create_app
            from surrogate_service.settings import SurrogateSettings

            app = create_app(SurrogateSettings())
        _ROUTES[module] = {r.path for r in app.routes}
    return _ROUTES[module]


def settings_fields(prefix: str) -> set[str]:
    if prefix == "REWARD_":
        from reward_service.settings import RewardSettings as model
    elif prefix == "SURROGATE_":
        from surrogate_service.settings import SurrogateSettings as model
    else:
        from trainer.config import TrainConfig as model
    assert model.model_config["env_prefix"] == prefix
    return {prefix + name.upper() for name in model.model_fields}


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def service_dockerfile(svc: dict) -> list[tuple[str, str]] | None:
    build = svc.get("build")
    if build is None:
        return None
    ctx = ROOT / (build["context"] if isinstance(build, dict) else build)
    return parse_dockerfile(ctx / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile"))


def service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in interpolate(env).items()}


def service_argv(svc: dict) -> list[str]:
    """The container's argv: compose entrypoint/command over the image's ENTRYPOINT/CMD."""
    instrs = service_dockerfile(svc)
    entry, cmd = image_argv(instrs) if instrs else ([], [])
    if "entrypoint" in svc:
        entry, cmd = interpolate(svc["entrypoint"]), []
    if "command" in svc:
        c = interpolate(svc["command"])
        cmd = shlex.split(c) if isinstance(c, str) else c
    return [*entry, *cmd]


def bind_mounts(svc: dict) -> dict[str, Path]:
    """container path -> host path of each bind mount (named volumes left out)."""
    out = {}
    for v in interpolate(svc.get("volumes", [])):
        src, _, rest = v.partition(":")
        if src.startswith((".", "/")):
            out[rest.split(":")[0]] = (ROOT / src).resolve()
    return out


def container_env(svc: dict) -> dict[str, str]:
    instrs = service_dockerfile(svc)
    env = dockerfile_env(final_stage(instrs)) if instrs else {}
    env.update(service_env(svc))
    return env


def service_settings(name: str, svc: dict, monkeypatch) -> list[tuple[str, object]]:
    env = container_env(svc)
    mounts = bind_mounts(svc)
    for key, val in env.items():  # container paths under a bind mount -> the host file behind it
        for target, host in mounts.items():
            if val == target or val.startswith(target.rstrip("/") + "/"):
                env[key] = str(host / os.path.relpath(val, target))
    cmds = python_commands(service_argv(svc))
    assert cmds, f"{name}: runs no `python -m` program"
    return [(module, run_module(module, args, env, monkeypatch)) for module, args in cmds]


def served_port(name: str, svc: dict, monkeypatch) -> tuple[str, int] | None:
    for module, settings in service_settings(name, svc, monkeypatch):
        if module in SERVERS:
            return module, settings.port
    return None


# ----------------------------------------------------------------------------- Dockerfiles


def test_every_image_exists():
    assert set(DOCKERFILES) >= {"reward", "surrogate", "trainer", "cpu", "imagereward"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_basics(name):
    instrs = parse_dockerfile(DOCKERFILES[name])
    stage = final_stage(instrs)
    args = {}
    for k, a in instrs:
        if k == "ARG" and "=" in a:
            key, _, val = a.partition("=")
            args[key] = val
        if k == "ARG":
            assert not any(w in a.upper() for w in SECRET_WORDS), f"secret-looking build ARG: {a}"
    for k, a in instrs:
        if k == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0])
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: unpinned base {image}"
    users = [a for k, a in stage if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: final stage runs as root"
    env = dockerfile_env(stage)
    assert env.get("HF_HOME") == "/cache/huggingface"
    for key in env:
        assert not any(w in key for w in SECRET_WORDS), f"{name}: secret baked into ENV {key}"
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", section, re.M))
    assert {"cpu", "services", "trainer"} <= extras
    for k, a in instrs:
        if k == "RUN":
            for group in re.findall(r"\.\[([\w,]+)\]", a):
                assert set(group.split(",")) <= extras, f"{name}: unknown extra in {group}"


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip().rstrip("/") for x in lines if x.strip() and not x.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = Path(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               for p in prefixes for pat in patterns if not pat.startswith("!"))


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_in_the_context(name):
    patterns = _dockerignore()
    for k, a in parse_dockerfile(DOCKERFILES[name]):
        if k not in ("COPY", "ADD"):
            continue
        words = [w for w in a.split() if not w.startswith("--")]
        if any(w.startswith("--from") for w in a.split()):
            continue
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"{name}: COPY source {src} does not exist"
            assert not _ignored(src.rstrip("/"), patterns), f"{name}: COPY source {src} is in .dockerignore"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_commands_ports_and_healthcheck(name, monkeypatch):
    instrs = parse_dockerfile(DOCKERFILES[name])
    stage = final_stage(instrs)
    env = dockerfile_env(stage)
    for key in env:
        for prefix in PREFIXES:
            if key.startswith(prefix):
                assert key in settings_fields(prefix), f"{name}: ENV {key} is no settings field"
    entry, cmd = image_argv(instrs)
    cmds = python_commands([*entry, *cmd])
    assert cmds, f"{name}: ENTRYPOINT/CMD run no `python -m` program"
    ports = set()
    for module, args in cmds:
        settings = run_module(module, args, env, monkeypatch)
        if module in SERVERS:
            assert settings.host == "0.0.0.0", f"{name}: {module} would bind {settings.host}, unreachable"
            ports.add(settings.port)
    exposed = {int(p.split("/")[0]) for k, a in stage if k == "EXPOSE" for p in a.split()}
    if ports:
        assert exposed == ports, f"{name}: EXPOSE {exposed} but the service listens on {ports}"
    else:  # a batch image may expose the services' default ports for ad-hoc use
        from reward_service.settings import RewardSettings
        from surrogate_service.settings import SurrogateSettings

        defaults = {RewardSettings.model_fields["port"].default, SurrogateSettings.model_fields["port"].default}
        assert exposed <= defaults, f"{name}: EXPOSE {exposed} matches no service port"
    checks = [a for k, a in stage if k == "HEALTHCHECK"]
    assert checks, f"{name}: no HEALTHCHECK (use HEALTHCHECK NONE for batch images, with a reason)"
    if checks[-1] == "NONE":
        assert not ports, f"{name}: a server image needs an HTTP healthcheck"
        return
    test = exec_form(checks[-1].split(" CMD ", 1)[1]) if " CMD " in checks[-1] else None
    assert test and test[0].startswith("python"), f"{name}: healthcheck must use python (no curl): {checks[-1]}"
    url = urlsplit(healthcheck_url(test))
    module = next(m for m, _ in cmds if m in SERVERS)
    assert url.port in ports and url.path in routes(module), f"{name}: healthcheck {url.geturl()}"
    assert url.path == "/healthz"


# ----------------------------------------------------------------------------- compose


def test_compose_services_and_profiles(services):
    assert set(services) >= {"redis", "reward-service", "reward-imagereward", "surrogate-service", "trainer", "demo"}
    assert services["demo"].get("profiles") == ["cpu"]
    default = {n for n, s in services.items() if not s.get("profiles")}
    assert default >= {"redis", "reward-service", "reward-imagereward", "surrogate-service", "trainer"}
    assert "demo" not in default
    for n, s in services.items():  # nothing GPU-bound may come up with the cpu profile
        if "cpu" in s.get("profiles", []):
            assert "deploy" not in s, f"{n}: GPU reservation in the cpu profile"
            for dep in s.get("depends_on", {}):
                assert "cpu" in services[dep].get("profiles", []), f"{n} depends on non-cpu {dep}"
    demo_cmds = python_commands(service_argv(services["demo"]))
    assert demo_cmds and demo_cmds[0][0] == "trainer" and demo_cmds[0][1][0] == "demo"
    assert "cpu.Dockerfile" in services["demo"]["build"]["dockerfile"]


def test_build_files_exist(services):
    for n, s in services.items():
        if "build" in s:
            ctx = ROOT / s["build"]["context"]
            assert ctx.is_dir(), f"{n}: build context {ctx}"
            assert (ctx / s["build"]["dockerfile"]).is_file(), f"{n}: {s['build']['dockerfile']}"
        else:
            assert ":" in s["image"] and not s["image"].endswith(":latest"), f"{n}: unpinned image"


def test_redis(services):
    r = services["redis"]
    assert r["image"].startswith("redis:7")
    cmd = r["command"] if isinstance(r["command"], list) else shlex.split(r["command"])
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(not v.startswith((".", "/")) and v.endswith(":/data") for v in r["volumes"])
    assert r["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_commands_env_ports_and_healthchecks(services, monkeypatch):
    for name, svc in services.items():
        if name == "redis":
            continue
        env = container_env(svc)
        for key in env:
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    assert key in settings_fields(prefix), f"{name}: {key} is no settings field"
        results = service_settings(name, svc, monkeypatch)
        server = [(m, s) for m, s in results if m in SERVERS]
        for m, s in server:
            assert s.host == "0.0.0.0", f"{name}: {m} would bind {s.host}"
        mapped = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in interpolate(svc.get("ports", []))}
        if server:
            assert mapped <= {server[0][1].port}, f"{name}: ports {mapped} vs service port {server[0][1].port}"
        else:
            assert not mapped, f"{name}: maps ports but serves nothing"
        hc = svc.get("healthcheck")
        if server:
            assert hc, f"{name}: a server without a compose healthcheck"
            url = urlsplit(healthcheck_url(hc["test"]))
            assert hc["test"][0] == "CMD" and hc["test"][1].startswith("python"), f"{name}: {hc['test']}"
            assert url.port == server[0][1].port, f"{name}: healthcheck port {url.port}"
            assert url.path in routes(server[0][0]), f"{name}: healthcheck path {url.path}"


def test_service_urls_point_at_real_services(services, monkeypatch):
    """http://svc:port/... and redis://svc:port in commands and env name a service on its port."""
    ports = {n: p for n, s in services.items() if n != "redis" and (p := served_port(n, s, monkeypatch))}
    for name, svc in services.items():
        texts = [*service_argv(svc), *container_env(svc).values()]
        for text in texts:
            for url in re.findall(r"(?:https?|redis)://[^\s'\",]+", text):
                u = urlsplit(url)
                if u.hostname in ("127.0.0.1", "localhost", "0.0.0.0"):
                    continue
                assert u.hostname in services, f"{name}: {url} names no compose service"
                if u.scheme == "redis":
                    assert u.port == 6379 and services[u.hostname]["image"].startswith("redis:")
                    continue
                module, port = ports[u.hostname]
                assert u.port == port, f"{name}: {url} but {u.hostname} listens on {port}"
                if u.path not in ("", "/"):
                    assert u.path in routes(module), f"{name}: {url}: no such route"


def test_reward_names_exist(services, monkeypatch):
    """Rewards a reward service loads are registered; the trainer's reward is served by one."""
    from reward_service.rewards.registry import available

    known = available()
    runs = {n: service_settings(n, s, monkeypatch) for n, s in services.items() if n != "redis"}
    served = set()
    for name, results in runs.items():
        for module, settings in results:
            if module == "reward_service":
                for r in settings.rewards:
                    assert r in known or ":" in r, f"{name}: reward {r!r} is not registered; known: {sorted(known)}"
                served |= set(settings.rewards) | {item.partition("=")[0] for item in settings.remote}
    for name, results in runs.items():
        for module, settings in results:
            if module == "trainer" and not isinstance(settings, dict):
                assert settings.reward in served, f"{name}: trainer reward {settings.reward!r} not in {served}"


def test_depends_on_healthy(services):
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with a condition"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
            target = services[dep]
            has_check = "healthcheck" in target
            if not has_check and (instrs := service_dockerfile(target)):
                has_check = any(k == "HEALTHCHECK" and a != "NONE" for k, a in final_stage(instrs))
            assert has_check, f"{name} waits for {dep}, which has no healthcheck"


def test_gpu_reservations(services):
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), name
        for d in devices:
            assert ("count" in d) != ("device_ids" in d), f"{name}: count and device_ids are exclusive"


def test_volumes(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for v in interpolate(svc.get("volumes", [])):
            src = v.split(":")[0]
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), f"{name}: bind mount source {src} missing"
            else:
                assert src in declared, f"{name}: volume {src} not declared"
    for name in ("surrogate-service", "trainer"):
        targets = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/cache/huggingface", "/data"} <= targets, name


def test_no_secrets():
    """Token-like variables are empty or come from the caller's environment with an empty default."""
    words = "|".join(SECRET_WORDS)
    pat = re.compile(rf"^\s*-?\s*([A-Z0-9_]*(?:{words})[A-Z0-9_]*)\s*[:=]\s*(.*)$")
    for path in [COMPOSE_FILE, DOCKER / "env.example", *DOCKERFILES.values()]:
        for line in path.read_text().splitlines():
            if line.lstrip().startswith("#") or not (m := pat.match(line)):
                continue
            value = m.group(2).strip().strip("'\"")
            assert value == "" or re.fullmatch(r"\$\{[A-Z0-9_]+:-\}", value), f"{path.name}: {line.strip()}"


def test_docker_compose_config(tmp_path):
    """`docker compose config` (or the standalone docker-compose) only parses and validates the
    file against the compose schema; no engine needed. Skipped where neither is installed."""
    candidates = []
    if docker := shutil.which("docker"):
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            candidates.append([docker, "compose"])
    if legacy := shutil.which("docker-compose"):
        candidates.append([legacy])
    if not candidates:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed; the YAML is parsed above")
    for extra in ([], ["--profile", "cpu"]):
        res = subprocess.run([*candidates[0], "-f", str(COMPOSE_FILE), *extra, "config", "--quiet"],
                             capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HOME": str(tmp_path)})
        assert res.returncode == 0, res.stderr


def test_memory_table_in_docs_is_current():
    """docs/deployment.md carries the output of docker/memory_estimate.py verbatim."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("memory_estimate", DOCKER / "memory_estimate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
    finally:
        del sys.modules[spec.name]
    assert mod.tables() in (ROOT / "docs" / "deployment.md").read_text(), \
        "regenerate the tables: python docker/memory_estimate.py"


def test_env_example_names_real_settings():
    """docker/env.example: LASRO_* are compose-only knobs; any REWARD_/SURROGATE_/TRAINER_ name is
    a real settings field (compose passes those on under the same name)."""
    compose_text = COMPOSE_FILE.read_text()
    for line in (DOCKER / "env.example").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key = line.split("=", 1)[0]
        assert "${" + key in compose_text, f"env.example sets {key}, which docker-compose.yml never reads"
        for prefix in PREFIXES:
            if key.startswith(prefix):
                assert key in settings_fields(prefix), f"env.example: {key} is no settings field"
