"""The compose Redis has a password nobody had to invent, and every client authenticates.

The redis role of docker/entrypoint.sh (what the compose `redis` service runs) is started here
as a real redis-server, as in the container; the health check, the backup command of
docs/OPERATIONS.md and the service's clients (settings, Celery, the API and a worker over a real
stack) then use the generated password, read from SLT_REDIS_PASSWORD_FILE like in compose."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.settings import Settings
from store.connection import connect, free_port, redacted
from store.settings import SharedSettings, with_password

# redis-py retries a refused or failed call three times with backoff (about 10 s); a probe
# that expects the refusal wants it at once
NO_RETRY = Retry(NoBackoff(), 0)
ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


def load_healthcheck():
    spec = importlib.util.spec_from_file_location("healthcheck", ROOT / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def role_env(secrets: Path, **extra: str) -> dict[str, str]:
    """The container's environment: the image's python first on PATH, the password file."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "SLT_REDIS_PASSWORD_FILE": str(secrets / "redis-password"), **extra}


class RedisRole:
    """`docker/entrypoint.sh redis` as the compose service runs it, on a free loopback port."""

    def __init__(self, root: Path, secrets: Path):
        self.root, self.secrets = root, secrets
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisRole:
        self.root.mkdir(parents=True, exist_ok=True)
        self.secrets.mkdir(parents=True, exist_ok=True)
        env = role_env(self.secrets, REDIS_DIR=str(self.root), REDIS_PORT=str(self.port))
        self.log = open(self.root / "role.log", "ab")
        self.proc = subprocess.Popen(["sh", str(ENTRYPOINT), "redis", "--bind", "127.0.0.1"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.root / "role.log").read_text()
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1, retry=NO_RETRY).ping()
            except redis.AuthenticationError:
                return self  # up, and it wants a password
            except redis.ResponseError as e:  # NOAUTH on older servers
                if "NOAUTH" in str(e) or "Authentication" in str(e):
                    return self
                raise
            except redis.ConnectionError:
                time.sleep(0.05)
                continue
            raise AssertionError("redis answered a PING without a password")
        raise AssertionError(f"redis role not up:\n{(self.root / 'role.log').read_text()}")

    @property
    def password(self) -> str:
        return (self.secrets / "redis-password").read_text().strip()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        self.log.close()


@pytest.fixture
def role(tmp_path):
    r = RedisRole(tmp_path / "redis-data", tmp_path / "secrets").start()
    yield r
    r.stop()


def test_redis_role_generates_a_password_once_and_requires_it(role, tmp_path):
    password = role.password
    assert len(password) >= 32
    assert (tmp_path / "secrets" / "redis-password").stat().st_mode & 0o077 == 0  # mode 600
    assert redis.Redis(port=role.port, password=password).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=role.port, password="wrong", retry=NO_RETRY).ping()
    # not on the command line, where any process of the container could read it
    cmdline = Path(f"/proc/{role.proc.pid}/cmdline").read_bytes()
    assert password.encode() not in cmdline
    role.stop()
    again = RedisRole(role.root, role.secrets).start()  # a restart keeps the same password
    try:
        assert again.password == password
        assert redis.Redis(port=again.port, password=password).ping()
    finally:
        again.stop()


def test_health_check_authenticates_with_the_password_file(role, monkeypatch):
    hc = load_healthcheck()
    monkeypatch.setenv("SLT_REDIS_PASSWORD_FILE", str(role.secrets / "redis-password"))
    assert hc.redis_ping("127.0.0.1", role.port, hc.password_file()) is True
    assert hc.redis_ping("127.0.0.1", role.port, None) is False  # a bare PING is refused


def test_the_documented_backup_command_authenticates(role):
    """OPERATIONS.md: `docker compose exec redis /opt/slt/bin/entrypoint.sh redis-cli
    BGREWRITEAOF`; the same role here, with the port of this server."""
    env = role_env(role.secrets, REDIS_PORT=str(role.port))
    out = subprocess.run(["sh", str(ENTRYPOINT), "redis-cli", "BGREWRITEAOF"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "rewriting started" in out.stdout.lower(), out
    assert "redis-cli BGREWRITEAOF" in (ROOT / "docs" / "OPERATIONS.md").read_text()


def test_settings_put_the_password_into_the_url_every_client_uses(role, monkeypatch):
    monkeypatch.setenv("SLT_REDIS_URL", role.url)
    monkeypatch.setenv("SLT_REDIS_PASSWORD_FILE", str(role.secrets / "redis-password"))
    for settings in (SharedSettings(), Settings()):  # the worker's and the API's
        assert connect(settings.redis_url).ping()
        assert role.password not in redacted(settings.redis_url)
    with pytest.raises(redis.AuthenticationError):
        connect(role.url).ping()
    # Celery's broker and backend take the same URL
    from worker.app import make_app

    app = make_app(SharedSettings().redis_url)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1)
        conn.default_channel.client.ping()


def test_a_password_in_the_url_wins_and_a_missing_file_is_a_clear_error(tmp_path, monkeypatch):
    assert with_password("redis://:given@h:6379/0", "other") == "redis://:given@h:6379/0"
    assert with_password("redis://h:6379/2", "p/w") == "redis://:p%2Fw@h:6379/2"
    assert with_password("unix:///run/redis.sock?db=1", "pw") == "unix:///run/redis.sock?db=1&password=pw"
    monkeypatch.setenv("SLT_REDIS_URL", "redis://h:6379/0")
    monkeypatch.setenv("SLT_REDIS_PASSWORD_FILE", str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="SLT_REDIS_PASSWORD_FILE"):
        SharedSettings()


def test_api_and_worker_run_a_search_on_a_redis_with_a_password(role, tmp_path, emoji_google_dir):
    """Every client of a real stack authenticates: the API (records, the domain listener, the
    readiness probe, Celery's producer) and the worker (Celery's consumer, the job store)."""
    from slt_stack import Stack, copy_images

    stack = Stack(tmp_path / "home", SLT_REDIS_URL=role.url,
                  SLT_REDIS_PASSWORD_FILE=str(role.secrets / "redis-password"))
    try:
        copy_images(emoji_google_dir, tmp_path / "home" / "datasets" / "tiny")
        stack.start_api()
        stack.start_worker()
        job_id = stack.submit("tiny", iterations=3)
        job = stack.wait_job(job_id)
        assert job["status"] == "succeeded", job
        with stack.client(admin=False) as c:
            ready = c.get("/readyz").json()
            assert ready["redis"] is True and ready["status"] == "ready", ready
        for name in ("api", "worker-1"):  # the password never reaches a log
            assert role.password not in stack.log(name)
    finally:
        stack.close()


def test_logged_urls_hide_the_password():
    assert redacted("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("rediss://user:s3cret@h/1") == "rediss://user:***@h/1"
    assert redacted("unix:///run/r.sock?db=1&password=s3cret") == "unix:///run/r.sock?db=1&password=***"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"
