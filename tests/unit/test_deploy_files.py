"""The deployment files (docker/Dockerfile, docker-compose.yml) agree with the code.

No Docker engine needed: the files are parsed, and every `python -m` command they run goes
through that program's real argparse parser and settings model (servers and training are
stubbed out), so a renamed flag, env variable, port or route fails here, not in a container.
tests/docker/ builds and runs them for real where an engine can be started.
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
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
TARGETS = ("reward", "surrogate", "trainer")  # docker/Dockerfile's image targets
SERVERS = {"reward_service": "REWARD_", "surrogate_service": "SURROGATE_"}
PREFIXES = {"REWARD_": "reward_service", "SURROGATE_": "surrogate_service", "TRAINER_": "trainer"}
CPU_STACK = {"redis", "reward", "surrogate", "trainer"}
GPU_STACK = {"redis", "reward-gpu", "surrogate-gpu", "trainer-gpu"}
GPU_SERVICES = {"reward-gpu", "surrogate-gpu", "trainer-gpu"}
INDEX_ARGS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "TORCH_INDEX_URL")
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


def split_stages(instrs: list[tuple[str, str]]) -> tuple[dict[str, str], list[dict]]:
    """Global ARG defaults (before the first FROM) and the stages: name, base, instructions."""
    global_args: dict[str, str] = {}
    stages: list[dict] = []
    for k, a in instrs:
        if k == "FROM":
            words = a.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append({"name": name, "base": words[0], "instrs": []})
        elif not stages:
            if k == "ARG":
                key, _, val = a.partition("=")
                global_args[key] = val
        else:
            stages[-1]["instrs"].append((k, a))
    return global_args, stages


def image_stages(instrs: list[tuple[str, str]], target: str | None = None) -> list[dict]:
    """The stages an image built with --target TARGET (default: the last) is made of, base
    first: a stage FROM another stage inherits its ENV, USER, WORKDIR."""
    _, stages = split_stages(instrs)
    by_name = {s["name"]: s for s in stages if s["name"]}
    assert target is None or target in by_name, f"no stage named {target!r}"
    chain = [by_name[target] if target else stages[-1]]
    while chain[0]["base"] in by_name:
        chain.insert(0, by_name[chain[0]["base"]])
    return chain


def image_instrs(instrs: list[tuple[str, str]], target: str | None = None) -> list[tuple[str, str]]:
    return [i for s in image_stages(instrs, target) for i in s["instrs"]]


def base_image(instrs: list[tuple[str, str]], target: str | None = None, build_args: dict | None = None) -> str:
    global_args, _ = split_stages(instrs)
    return substitute(image_stages(instrs, target)[0]["base"], {**global_args, **(build_args or {})})


def substitute(text: str, scope: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: scope.get(m.group(1) or m.group(2), ""), text)


def dockerfile_env(instrs: list[tuple[str, str]], build_args: dict | None = None) -> dict[str, str]:
    """ENV of an image's instructions, ARG values (build args over defaults) substituted."""
    env: dict[str, str] = {}
    scope: dict[str, str] = {}
    for k, args in instrs:
        if k == "ARG":
            key, _, val = args.partition("=")
            scope[key] = str((build_args or {}).get(key, val))
        if k == "ENV":
            for tok in shlex.split(args):
                key, sep, val = tok.partition("=")
                assert sep, f"ENV {args!r}: use the KEY=VALUE form"
                env[key] = substitute(val, {**scope, **env})
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(x, str) for x in value), args
    return value


def image_argv(instrs: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    entry = [exec_form(a) for k, a in instrs if k == "ENTRYPOINT"]
    cmd = [exec_form(a) for k, a in instrs if k == "CMD"]
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
        monkeypatch.setattr("uvicorn.run", lambda *a, **k: pytest.fail("would serve"))
    elif module == "trainer":
        import trainer.__main__ as main_mod
        import trainer.demo
        from lasro_common.cli import settings_from_args
        from trainer.config import TrainConfig

        def fake_from_args(model, ns, **extra):
            try:
                cfg = settings_from_args(TrainConfig, ns, **extra)
            except ValueError as e:
                pytest.fail(f"trainer config rejected: {e}")
            raise _Captured(cfg)

        def fake_demo(out, reward, overrides):
            raise _Captured({"out": out, "reward": reward, "overrides": overrides})

        monkeypatch.setattr(main_mod, "settings_from_args", fake_from_args)
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


def build_args(svc: dict) -> dict[str, str]:
    return {k: str(v) for k, v in interpolate((svc.get("build") or {}).get("args") or {}).items()}


def service_image(svc: dict) -> list[tuple[str, str]] | None:
    """The instructions of the image a service builds (its target's stages)."""
    build = svc.get("build")
    if build is None:
        return None
    ctx = ROOT / build["context"]
    return image_instrs(parse_dockerfile(ctx / build.get("dockerfile", "Dockerfile")), build.get("target"))


def service_env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in interpolate(env).items()}


def service_argv(svc: dict) -> list[str]:
    """The container's argv: compose entrypoint/command over the image's ENTRYPOINT/CMD."""
    instrs = service_image(svc)
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


def named_volumes(svc: dict) -> dict[str, str]:
    """container path -> named volume."""
    out = {}
    for v in interpolate(svc.get("volumes", [])):
        src, _, rest = v.partition(":")
        if not src.startswith((".", "/")):
            out[rest.split(":")[0]] = src
    return out


def container_env(svc: dict) -> dict[str, str]:
    instrs = service_image(svc)
    env = dockerfile_env(instrs, build_args(svc)) if instrs else {}
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


# ----------------------------------------------------------------------------- the Dockerfile


def test_one_dockerfile_with_a_target_per_program():
    _, stages = split_stages(parse_dockerfile(DOCKERFILE))
    names = [s["name"] for s in stages]
    assert set(TARGETS) <= set(names) and "builder" in names, names
    others = sorted(p.name for p in DOCKER.rglob("*") if "dockerfile" in p.name.lower() and p != DOCKERFILE)
    assert not others, f"every image comes from docker/Dockerfile; also found {others}"
    assert not (DOCKER / "imagereward").exists(), "ImageReward runs in the reward image (issue 13)"


def test_nothing_installs_openai_clip_from_github():
    kinds = ("Dockerfile", ".txt", ".toml", ".cfg", ".yml", ".yaml", ".sh", "Makefile")
    files = [p for p in ROOT.rglob("*") if p.is_file() and p.name.endswith(kinds)
             and not set(p.relative_to(ROOT).parts) & {".git", ".venv", "runs", "node_modules"}]
    for p in files:
        text = p.read_text(errors="ignore").lower()
        assert "github.com/openai/clip" not in text, f"{p.relative_to(ROOT)} installs OpenAI CLIP from GitHub"


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_basics(target):
    instrs = parse_dockerfile(DOCKERFILE)
    global_args, _ = split_stages(instrs)
    for k, a in instrs:
        if k == "ARG":
            assert not any(w in a.upper() for w in SECRET_WORDS), f"secret-looking build ARG: {a}"
    builder = image_instrs(instrs, "builder")
    declared = {a.partition("=")[0] for k, a in builder if k == "ARG"}
    assert set(INDEX_ARGS) <= declared, f"package indexes must be build args: {declared}"
    assert "BASE_IMAGE" in global_args
    for stage_target in ("builder", target):
        image = base_image(instrs, stage_target)
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and "/" not in tag, f"{stage_target}: unpinned base {image}"
    final = image_instrs(instrs, target)
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{target}: runs as root"
    assert not any(k == "ARG" and a.partition("=")[0] in INDEX_ARGS for k, a in final), \
        "index URLs (maybe with credentials) belong to the builder stage only"
    assert not any(w in a for k, a in final if k == "RUN" for w in ("build-essential", "gcc", "-dev ")), \
        "compilers belong to the builder stage"
    env = dockerfile_env(final)
    assert env.get("HF_HOME") == "/cache/huggingface"
    for key in env:
        assert not any(w in key for w in SECRET_WORDS), f"{target}: secret baked into ENV {key}"
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = set(re.findall(r"^(\w+) = \[", section, re.M))
    assert {"services", "trainer"} <= extras
    for k, a in instrs:
        if k == "RUN":
            for group in re.findall(r"\.\[([\w,]+)\]", a):
                assert set(group.split(",")) <= extras, f"unknown extra in {group}"


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [x.strip().rstrip("/") for x in lines if x.strip() and not x.startswith("#")]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = Path(rel).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               for p in prefixes for pat in patterns if not pat.startswith("!"))


def test_copy_sources_and_every_package_are_in_the_context():
    patterns = _dockerignore()
    for k, a in parse_dockerfile(DOCKERFILE):
        if k not in ("COPY", "ADD") or "--from" in a:
            continue
        for src in [w for w in a.split() if not w.startswith("--")][:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} does not exist"
            assert not _ignored(src.rstrip("/"), patterns), f"COPY source {src} is in .dockerignore"
    # the image installs the packages pyproject.toml lists: none may be left out of the context
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include = \[([^\]]*)\]",
                        (ROOT / "pyproject.toml").read_text()).group(1)
    pats = re.findall(r'"([^"]+)"', include)
    packages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and any(fnmatch.fnmatch(p.name, x) for x in pats)]
    assert {"lasro_common", "reward_service", "surrogate_service", "trainer", "toyworld"} <= set(packages)
    for name in [*packages, "pyproject.toml", "README.md", "toyworld/models/lcm/model_index.json"]:
        assert not _ignored(name, patterns), f"{name} is in .dockerignore but goes into the image"
    for heavy in (".git", ".venv", "runs", "tests", "docs"):
        assert _ignored(heavy, patterns), f"{heavy} should stay out of the build context"


@pytest.mark.parametrize("target", TARGETS)
def test_dockerfile_commands_ports_and_healthcheck(target, monkeypatch):
    final = image_instrs(parse_dockerfile(DOCKERFILE), target)
    env = dockerfile_env(final)
    for key in env:
        for prefix in PREFIXES:
            if key.startswith(prefix):
                assert key in settings_fields(prefix), f"{target}: ENV {key} is no settings field"
    entry, cmd = image_argv(final)
    cmds = python_commands([*entry, *cmd])
    assert cmds, f"{target}: ENTRYPOINT/CMD run no `python -m` program"
    ports = set()
    for module, args in cmds:
        settings = run_module(module, args, env, monkeypatch)
        if module in SERVERS:
            assert settings.host == "0.0.0.0", f"{target}: {module} would bind {settings.host}, unreachable"
            ports.add(settings.port)
    exposed = {int(p.split("/")[0]) for k, a in final if k == "EXPOSE" for p in a.split()}
    assert exposed == ports, f"{target}: EXPOSE {exposed} but the program listens on {ports}"
    checks = [a for k, a in final if k == "HEALTHCHECK"]
    assert checks, f"{target}: no HEALTHCHECK (use HEALTHCHECK NONE for batch images, with a reason)"
    if checks[-1] == "NONE":
        assert not ports, f"{target}: a server image needs an HTTP healthcheck"
        return
    test = exec_form(checks[-1].split(" CMD ", 1)[1]) if " CMD " in checks[-1] else None
    assert test and test[0].startswith("python"), f"{target}: healthcheck must use python (no curl): {checks[-1]}"
    url = urlsplit(healthcheck_url(test))
    module = next(m for m, _ in cmds if m in SERVERS)
    assert url.port in ports and url.path in routes(module), f"{target}: healthcheck {url.geturl()}"
    assert url.path == "/healthz"


# ----------------------------------------------------------------------------- compose


def test_compose_profiles(services):
    """Two stacks by profile; a bare `docker compose up` starts nothing, so no GPU by surprise."""
    assert all(s.get("profiles") for s in services.values()), "a service without a profile starts on every `up`"
    cpu = {n for n, s in services.items() if "cpu" in s["profiles"]}
    gpu = {n for n, s in services.items() if "gpu" in s["profiles"]}
    assert cpu == CPU_STACK and gpu == GPU_STACK, (cpu, gpu)
    for n in cpu:  # nothing GPU-bound may come up with the cpu profile
        assert "deploy" not in services[n], f"{n}: GPU reservation in the cpu profile"
        for dep in services[n].get("depends_on", {}):
            assert dep in cpu, f"{n} depends on non-cpu {dep}"
    for n, s in services.items():
        assert s.get("init") is True, f"{n}: init: true (signals reach the program; `down` is fast)"


def test_builds_take_indexes_from_the_environment(services):
    instrs = parse_dockerfile(DOCKERFILE)
    for n, s in services.items():
        if "build" not in s:
            assert ":" in s["image"] and not s["image"].endswith(":latest"), f"{n}: unpinned image"
            continue
        b = s["build"]
        assert (ROOT / b["context"]).is_dir() and (ROOT / b["context"] / b["dockerfile"]).is_file(), n
        assert b.get("network") == "host", f"{n}: build on the host network (a loopback index)"
        image_stages(parse_dockerfile(ROOT / b["context"] / b["dockerfile"]), b.get("target"))  # target exists
        declared = {a.partition("=")[0] for k, a in instrs if k == "ARG"}
        assert set(b["args"]) <= declared, f"{n}: build args {set(b['args']) - declared} are not ARGs"
        for arg in INDEX_ARGS:
            assert re.fullmatch(rf"\$\{{{arg}:-[^}}]*\}}", str(b["args"][arg])), f"{n}: {arg} from the environment"
        expected = "python:" if "cpu" in s["profiles"] else "nvidia/cuda:"
        assert base_image(instrs, b.get("target"), build_args(s)).startswith(expected), n


def test_redis(services):
    r = services["redis"]
    assert r["image"].startswith("redis:7")
    cmd = r["command"] if isinstance(r["command"], list) else shlex.split(r["command"])
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert any(not v.startswith((".", "/")) and v.endswith(":/data") for v in r["volumes"])
    assert r["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]
    assert "ports" not in r, "redis stays on the compose network"


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
            expected = "cuda" if "gpu" in svc["profiles"] else "cpu"
            assert s.device == expected, f"{name}: device {s.device}"
        mapped = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in interpolate(svc.get("ports", []))}
        if server:
            assert mapped <= {server[0][1].port}, f"{name}: ports {mapped} vs service port {server[0][1].port}"
            for p in interpolate(svc.get("ports", [])):
                assert str(p).startswith("127.0.0.1:"), f"{name}: publish on this host only: {p}"
        else:
            assert not mapped, f"{name}: maps ports but serves nothing"
        hc = svc.get("healthcheck")
        if server:
            assert hc, f"{name}: a server without a compose healthcheck"
            url = urlsplit(healthcheck_url(hc["test"]))
            assert hc["test"][0] == "CMD" and hc["test"][1].startswith("python"), f"{name}: {hc['test']}"
            assert url.port == server[0][1].port, f"{name}: healthcheck port {url.port}"
            assert url.path == "/readyz" and url.path in routes(server[0][0]), f"{name}: healthcheck path {url.path}"


def test_service_urls_point_at_real_services(services, monkeypatch):
    """http://svc:port/... and redis://svc:port in commands and env name a service on its port,
    in the same stack."""
    ports = {n: p for n, s in services.items() if n != "redis" and (p := served_port(n, s, monkeypatch))}
    for name, svc in services.items():
        texts = [*service_argv(svc), *container_env(svc).values()]
        for text in texts:
            for url in re.findall(r"(?:https?|redis)://[^\s'\",]+", text):
                u = urlsplit(url)
                if u.hostname in ("127.0.0.1", "localhost", "0.0.0.0"):
                    continue
                assert u.hostname in services, f"{name}: {url} names no compose service"
                assert set(services[u.hostname]["profiles"]) >= set(svc["profiles"]), f"{name}: {url} in another stack"
                if u.scheme == "redis":
                    assert u.port == 6379 and services[u.hostname]["image"].startswith("redis:")
                    continue
                module, port = ports[u.hostname]
                assert u.port == port, f"{name}: {url} but {u.hostname} listens on {port}"
                if u.path not in ("", "/"):
                    assert u.path in routes(module), f"{name}: {url}: no such route"


def test_the_two_stacks_keep_their_data_apart(services, monkeypatch):
    """One redis serves both: each stack on its own database; no volume is shared but redis's and the HF cache."""
    dbs = {}
    for svc in services.values():
        for text in [*service_argv(svc), *container_env(svc).values()]:
            for url in re.findall(r"redis://[^\s'\",]+", text):
                dbs.setdefault(svc["profiles"][0], set()).add(urlsplit(url).path)
    assert len(dbs["cpu"]) == 1 and len(dbs["gpu"]) == 1 and dbs["cpu"] != dbs["gpu"], dbs
    cpu_vols = {v for n in CPU_STACK - {"redis"} for v in named_volumes(services[n]).values()}
    gpu_vols = {v for n in GPU_STACK - {"redis"} for v in named_volumes(services[n]).values()}
    assert cpu_vols & gpu_vols <= {"hf-cache"}, cpu_vols & gpu_vols


def test_reward_names_exist(services, monkeypatch):
    """Rewards a reward service loads are registered; each trainer's reward is served in its stack."""
    from reward_service.rewards.registry import available

    known = available()
    runs = {n: service_settings(n, s, monkeypatch) for n, s in services.items() if n != "redis"}
    served: dict[str, set] = {}
    for name, results in runs.items():
        for module, settings in results:
            if module == "reward_service":
                for r in settings.rewards:
                    assert r in known or ":" in r, f"{name}: reward {r!r} is not registered; known: {sorted(known)}"
                stack = services[name]["profiles"][0]
                served.setdefault(stack, set()).update(settings.rewards, (i.partition("=")[0] for i in settings.remote))
    for name, results in runs.items():
        for module, settings in results:
            if module == "trainer" and not isinstance(settings, dict):
                stack = services[name]["profiles"][0]
                assert settings.reward in served[stack], f"{name}: reward {settings.reward!r} not in {served[stack]}"
    assert "image_reward" in served["gpu"], "the GPU stack serves ImageReward from the reward image"


def test_depends_on_healthy(services):
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with a condition"
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert spec.get("condition") == "service_healthy", f"{name} -> {dep}"
            target = services[dep]
            has_check = "healthcheck" in target
            if not has_check and (instrs := service_image(target)):
                has_check = any(k == "HEALTHCHECK" and a != "NONE" for k, a in instrs)
            assert has_check, f"{name} waits for {dep}, which has no healthcheck"
    for trainer in ("trainer", "trainer-gpu"):
        assert set(services[trainer]["depends_on"]) == (CPU_STACK if trainer == "trainer" else GPU_STACK) - {trainer}


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
    for name in ("surrogate-gpu", "trainer-gpu", "reward-gpu"):
        assert "/cache/huggingface" in named_volumes(services[name]), f"{name}: downloads go to the hf-cache volume"
    # what a restart must find again lives in named volumes: the learner's checkpoints, the runs
    for name, key in (("surrogate", "SURROGATE_CHECKPOINT_DIR"), ("trainer", "TRAINER_OUT"),
                      ("surrogate-gpu", "SURROGATE_CHECKPOINT_DIR"), ("trainer-gpu", "TRAINER_OUT")):
        path = container_env(services[name])[key]
        mounts = named_volumes(services[name])
        assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts), f"{name}: {key}={path} not in a volume"


def test_cpu_stack_runs_the_demo_settings(services, monkeypatch):
    """The toy stack is `make demo` split into containers: the same trainer and learner settings."""
    from trainer.demo import DEMO_DEFAULTS, SURROGATE_ENV

    cfg = [s for m, s in service_settings("trainer", services["trainer"], monkeypatch) if m == "trainer"][-1]
    for key, value in DEMO_DEFAULTS.items():
        assert getattr(cfg, key) == value, f"trainer {key}: {getattr(cfg, key)} (demo: {value})"
    env = container_env(services["surrogate"])
    for key, value in SURROGATE_ENV.items():  # configs/demo.toml's [surrogate_service], numbers as numbers
        assert env.get(key) is not None and float(env[key]) == float(value), f"surrogate {key}: {env.get(key)} (demo: {value})"


def test_no_secrets():
    """Token-like variables are empty or come from the caller's environment with an empty default."""
    words = "|".join(SECRET_WORDS)
    pat = re.compile(rf"^\s*-?\s*([A-Z0-9_]*(?:{words})[A-Z0-9_]*)\s*[:=]\s*(.*)$")
    for path in [COMPOSE_FILE, DOCKER / "env.example", DOCKERFILE]:
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")} | {"HOME": str(tmp_path)}
    for profile in ("cpu", "gpu"):
        res = subprocess.run([*candidates[0], "-f", str(COMPOSE_FILE), "--profile", profile, "config", "--quiet"],
                             capture_output=True, text=True, cwd=ROOT, env=env)
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
    """docker/env.example: every name is one docker-compose.yml reads; any REWARD_/SURROGATE_/
    TRAINER_ name is also a real settings field (compose passes those on under the same name)."""
    compose_text = COMPOSE_FILE.read_text()
    for line in (DOCKER / "env.example").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key = line.split("=", 1)[0]
        assert "${" + key in compose_text, f"env.example sets {key}, which docker-compose.yml never reads"
        for prefix in PREFIXES:
            if key.startswith(prefix):
                assert key in settings_fields(prefix), f"env.example: {key} is no settings field"
