#!/usr/bin/env python3
"""`make compose-test`: the compose stack, built and run on this host's Docker engine.

Too heavy for `make test` (image builds, several searches on CPU), so pytest never collects
it (the name matches neither test_*.py nor *_test.py). Standard library only; run as root on a Debian-like
host (it installs docker.io, a compose CLI and debootstrap when missing and starts dockerd).

Phases, each timed:
  host         docker engine, compose CLI, debootstrap; dockerd running (vfs)
  config       docker-compose.yml (+ the GPU override) validate
  wheelhouse   make wheelhouse: every wheel the image needs, built with the host's pip
  demo-data    make docker-demo-data: the demo datasets, prepared on the host (npm)
  demo-trim    a copy cut to --demo-images per dataset, baked into the test image
  base-image   python:3.11-slim if present or pullable, else debootstrap bookworm + docker import
  build        the image, with the build container on `network: none` (proves the wheelhouse
               path needs no index)
  up           fresh volumes, `up -d`, /readyz on 127.0.0.1; Redis has the password its service
               generated (a bare PING is refused, every container's client authenticates: the
               API, the worker, both health checks, the documented backup command)
  demo         SLT_DEMO=1 installed the demo datasets, serves both demo domains at once from
               the shipped masks (default base) and queued their searches; these are cancelled
               (DELETE /jobs) to keep the test short, or with --full-demo run to the end
  search       POST /masks (admin), wait for it, GET /generate (PNG, deterministic)
  crash        second search; SIGKILL the worker container's main process mid-search; the
               restart policy brings it back and the job resumes from its checkpoint
  persistence  `down` + `up`: masks, jobs and domains are still there; same seed, same pixels
Test traffic goes only to the published port on 127.0.0.1.

    python3 tests/compose/drive.py [--keep] [--no-build] [--port N]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "compose-test"
PROJECT = "slt-compose-test"
IMAGE = "slt-serve:compose-test"
LOCAL_BASE = "slt-base:bookworm"
UPSTREAM_BASE = "python:3.11-slim"
PY = os.environ.get("PY", "python3.11")

TIMINGS: list[tuple[str, float, str]] = []
T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


@contextmanager
def phase(name: str):
    log(f"== {name}")
    t = time.monotonic()
    status = "FAILED"
    try:
        yield
        status = "ok"
    finally:
        TIMINGS.append((name, time.monotonic() - t, status))
        log(f"== {name}: {status} in {time.monotonic() - t:.1f} s")


class TestFailure(Exception):
    pass


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise TestFailure(msg)
    log(f"   ok: {msg}")


def run(cmd: list[str], *, capture: bool = False, check_rc: bool = True, env: dict | None = None,
        timeout: float | None = None, quiet: bool = False) -> subprocess.CompletedProcess:
    if not quiet:
        log("   $ " + " ".join(cmd))
    p = subprocess.run(cmd, cwd=ROOT, env=env, text=True, timeout=timeout,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.STDOUT if capture else None)
    if check_rc and p.returncode != 0:
        if capture:
            print(p.stdout[-4000:])
        raise TestFailure(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p


# ---------------------------------------------------------------------------------- compose


def compose_cli() -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise TestFailure("no compose CLI (docker compose / docker-compose)")


def clean_env() -> dict:
    """This process's environment without the settings compose would pass through: the test's
    env file is the only source of SLT_* and build settings."""
    drop = {"BASE_IMAGE", "TORCH_SPEC", "TORCH_INDEX_URL", "WHEELHOUSE", "DEMO_DATA", "INSTALL_NPM"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLT_") and k not in drop}
    # creating a container copies the whole image with the vfs storage driver: minutes, not
    # the 60 s docker-compose 1.29 waits for the engine by default
    env.setdefault("COMPOSE_HTTP_TIMEOUT", "900")
    env.setdefault("DOCKER_CLIENT_TIMEOUT", "900")
    return env


class Stack:
    def __init__(self, env_file: Path, files: list[Path]):
        self.cli = compose_cli()
        self.base = [*self.cli, "--env-file", str(env_file), "-p", PROJECT]
        for f in files:
            self.base += ["-f", str(f)]
        self.env = clean_env()

    def __call__(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return run([*self.base, *args], env=self.env, **kw)

    def container(self, service: str) -> str:
        cid = self("ps", "-q", service, capture=True, quiet=True).stdout.strip().splitlines()
        if not cid:
            raise TestFailure(f"no container for service {service}")
        return cid[-1].strip()

    def dump(self) -> None:
        self("ps", check_rc=False)
        for svc in ("redis", "api", "worker"):
            print(f"----- logs {svc} (tail) -----", flush=True)
            self("logs", "--no-color", "--tail", "80", svc, check_rc=False)


def inspect(cid: str, fmt: str) -> str:
    return run(["docker", "inspect", "-f", fmt, cid], capture=True, quiet=True).stdout.strip()


# ------------------------------------------------------------------------------------- HTTP


class Api:
    def __init__(self, port: int, token: str):
        self.url = f"http://127.0.0.1:{port}"  # published port on loopback, never a container IP
        self.token = token

    def request(self, method: str, path: str, body: dict | None = None, admin: bool = False,
                timeout: float = 60) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if admin:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, method: str, path: str, body: dict | None = None, admin: bool = False, expect=(200,)):
        st, _, data = self.request(method, path, body, admin)
        if st not in expect:
            raise TestFailure(f"{method} {path}: HTTP {st}: {data[:500]!r}")
        return json.loads(data)

    def wait_ready(self, timeout: float) -> dict:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                st, _, data = self.request("GET", "/readyz", timeout=10)
                if st == 200:
                    return json.loads(data)
                last = f"HTTP {st}: {data[:200]!r}"
            except (OSError, urllib.error.URLError) as e:
                last = repr(e)
            time.sleep(2)
        raise TestFailure(f"API not ready after {timeout:.0f} s ({last})")

    def wait_job(self, job_id: str, timeout: float, until=None, every: float = 3.0) -> dict:
        """Poll the job until `until(job)` (default: a terminal status); log progress."""
        until = until or (lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        deadline, seen = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:
                job = self.json("GET", f"/jobs/{job_id}")
            except (OSError, urllib.error.URLError) as e:  # API restarting: keep polling
                log(f"   (GET /jobs/{job_id}: {e!r})")
                time.sleep(every)
                continue
            state = (job["status"], job["iteration"] // 10, job.get("attempts"))  # a line per 10 iterations
            if state != seen:
                log(f"   job {job_id[:8]} {job['status']} it {job['iteration']}/{job['iterations']} "
                    f"attempts {job.get('attempts')} loss {job.get('loss')}"
                    + (f" note: {job['note']}" if job.get("note") else ""))
                seen = state
            if until(job):
                return job
            time.sleep(every)
        raise TestFailure(f"job {job_id} did not get there in {timeout:.0f} s (last {seen})")

    def generate(self, domain: str, seed: int, n: int, timeout: float = 120) -> bytes:
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            st, headers, data = self.request("GET", f"/generate?domain={domain}&n={n}&seed={seed}&format=png")
            if st == 200:
                if not data.startswith(b"\x89PNG\r\n\x1a\n"):
                    raise TestFailure(f"/generate: not a PNG ({headers.get('Content-Type')})")
                return data
            last = f"HTTP {st}: {data[:200]!r}"
            if st not in (404, 429, 503):  # 404/503: the new domain may not have reached the API yet
                break
            time.sleep(2)
        raise TestFailure(f"/generate?domain={domain}: {last}")


# ------------------------------------------------------------------------------------ steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_exists(ref: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", ref], capture_output=True).returncode == 0


def choose_base() -> str:
    if os.environ.get("BASE_IMAGE"):
        return os.environ["BASE_IMAGE"]
    if image_exists(UPSTREAM_BASE):
        return UPSTREAM_BASE
    p = subprocess.run(["docker", "pull", UPSTREAM_BASE], capture_output=True, text=True, timeout=120)
    if p.returncode == 0:
        return UPSTREAM_BASE
    log(f"   cannot pull {UPSTREAM_BASE} ({(p.stderr or p.stdout).strip().splitlines()[-1][:160]}); "
        f"building {LOCAL_BASE} with debootstrap")
    run(["docker/build-base-image.sh"], env=dict(os.environ, BASE_TAG=LOCAL_BASE))
    return LOCAL_BASE


def trim_demo_data(n: int) -> Path:
    """A copy of the demo datasets cut to n images each (hard links, manifests rewritten):
    what the test image bakes in, so each statistics pass takes seconds on a CPU."""
    src_root, dst_root = ROOT / "build" / "demo" / "datasets", OUT / "demo-data"
    for src in sorted(p for p in src_root.iterdir() if (p / "manifest.json").is_file()):
        manifest = json.loads((src / "manifest.json").read_text())
        dst = dst_root / src.name
        have = dst / "manifest.json"
        if have.is_file() and json.loads(have.read_text()).get("count") == n:
            continue
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir(parents=True)
        for png in sorted(src.glob("*.png"))[:n]:
            os.link(png, dst / png.name)
        manifest.update(count=n, trimmed_for_compose_test=True)
        have.write_text(json.dumps(manifest, indent=1))
    return dst_root


def check_settings_documented() -> None:
    """Every SLT_* setting the code reads reaches the containers and is documented: the test
    that checks the compose files against the settings' fields (tests/deploy/test_compose_env.py)."""
    py = ROOT / ".venv" / "bin" / "python"
    if not py.exists():
        log("   (no .venv: settings cross-check left to `make test`)")
        return
    out = run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/deploy/test_compose_env.py"],
              capture=True, check_rc=False, quiet=True)
    check(out.returncode == 0, "every setting passed by docker-compose.yml and documented"
          + ("" if out.returncode == 0 else f":\n{out.stdout[-3000:]}"))


def check_settings_reach_containers(cli: list[str]) -> None:
    """The compose CLI itself, given an env file that sets every setting to a marker, renders
    each one into both the api and the worker service (the pytest check reads the YAML; this is
    what the CLI really resolves from `.env`)."""
    py = ROOT / ".venv" / "bin" / "python"
    if not py.exists():
        log("   (no .venv: the settings' names are not known here; left to `make test`)")
        return
    code = ("import sys; sys.path.insert(0, 'tests/deploy'); from test_compose_env import every_setting; "
            "print(' '.join(sorted(every_setting())))")
    names = [n for n in run([str(py), "-c", code], capture=True, quiet=True).stdout.split()
             if n not in ("SLT_HOME", "SLT_HOST", "SLT_PORT")]  # fixed for the containers
    env_file = OUT / "every-setting.env"
    env_file.write_text("".join(f"{n}=marker-{n.lower()}\n" for n in names))
    out = run([*cli, "--env-file", str(env_file), "-f", "docker-compose.yml", "config"],
              capture=True, env=clean_env(), quiet=True).stdout
    blocks = {svc: out.split(f"\n  {svc}:\n", 1)[1].split("\n  redis:\n")[0].split("\n  worker:\n")[0]
              for svc in ("api", "worker")}
    missing = [f"{n} ({svc})" for svc, text in blocks.items() for n in names if f"marker-{n.lower()}" not in text]
    check(not missing, f"the compose CLI passes all {len(names)} settings from an env file to api and worker"
          + (f"; missing: {missing}" if missing else ""))


def check_redis_password(stack: Stack) -> None:
    """The stack runs on the password the redis service generated, and every client has it."""
    cli = ["exec", "-T", "redis", "/opt/slt/bin/entrypoint.sh", "redis-cli"]
    st = stack("exec", "-T", "redis", "sh", "-c", "test -s /secrets/redis-password && stat -c %a /secrets/redis-password",
               capture=True, check_rc=False, quiet=True)
    check(st.returncode == 0 and st.stdout.strip() == "600", f"redis generated its password (mode {st.stdout.strip()})")
    bare = stack("exec", "-T", "-e", "SLT_REDIS_PASSWORD_FILE=", "redis", "/opt/slt/bin/entrypoint.sh", "redis-cli",
                 "PING", capture=True, check_rc=False, quiet=True)
    check("NOAUTH" in bare.stdout, f"a PING without the password is refused ({bare.stdout.strip()})")
    pong = stack(*cli, "PING", capture=True, check_rc=False, quiet=True)
    check(pong.stdout.strip() == "PONG", f"redis-cli with the password: {pong.stdout.strip()}")
    for svc in ("api", "worker"):
        hc = stack("exec", "-T", svc, "python", "/opt/slt/bin/healthcheck.py", capture=True, check_rc=False, quiet=True)
        check(hc.returncode == 0, f"{svc} health check: {hc.stdout.strip()}")
    backup = stack(*cli, "BGREWRITEAOF", capture=True, check_rc=False, quiet=True)
    check("started" in backup.stdout.lower(), f"the documented backup command: {backup.stdout.strip()}")


def crash(cid: str) -> None:
    """Kill the container's main process from the host with SIGKILL: a crash, as an OOM kill
    would be. (`docker kill` is an operator's stop: Docker then leaves the container down
    whatever its restart policy, so it cannot show the policy at work.)"""
    pid = int(inspect(cid, "{{.State.Pid}}"))
    if pid <= 1:
        raise TestFailure(f"container {cid[:12]} has no running main process (pid {pid})")
    log(f"   SIGKILL pid {pid} (main process of worker container {cid[:12]})")
    os.kill(pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave the stack and its volumes up at the end")
    ap.add_argument("--no-build", action="store_true", help="reuse the image built by an earlier run")
    ap.add_argument("--port", type=int, default=0, help="host port for the API (default: a free one)")
    ap.add_argument("--search-iterations", type=int, default=30)
    ap.add_argument("--crash-iterations", type=int, default=80)
    ap.add_argument("--crash-at", type=int, default=20, help="iteration after which the worker is killed")
    ap.add_argument("--demo-images", type=int, default=96,
                    help="images per demo dataset baked into the test image (the full sets take "
                         "minutes per statistics pass on a 2-core CPU)")
    ap.add_argument("--full-demo", action="store_true",
                    help="let the demo searches run to the end and check their domains (slow on a CPU) "
                         "instead of cancelling them once queued")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    stack: Stack | None = None
    ok = False
    try:
        with phase("host"):
            run(["tests/compose/prepare-host.sh"])
            log("   " + run(["docker", "version", "--format", "engine {{.Server.Version}}"],
                            capture=True, quiet=True).stdout.strip()
                + f", storage driver {run(['docker', 'info', '--format', '{{.Driver}}'], capture=True, quiet=True).stdout.strip()}"
                + f", compose: {' '.join(compose_cli())}")

        with phase("config"):
            cli = compose_cli()
            run([*cli, "-f", "docker-compose.yml", "config", "-q"], env=clean_env())
            run([*cli, "-f", "docker-compose.yml", "-f", "docker-compose.gpu.yml", "config", "-q"], env=clean_env())
            check_settings_documented()
            check_settings_reach_containers(cli)

        with phase("wheelhouse"):
            run(["make", "--no-print-directory", "wheelhouse", f"PY={PY}"])

        with phase("demo-data"):
            run(["make", "--no-print-directory", "docker-demo-data", f"PY={PY}"])

        with phase("demo-trim"):
            demo_dir = trim_demo_data(args.demo_images)
            log(f"   DEMO_DATA={demo_dir.relative_to(ROOT)} ({args.demo_images} images per demo dataset)")

        with phase("base-image"):
            base = choose_base()
            log(f"   BASE_IMAGE={base}")

        port = args.port or free_port()
        token = secrets.token_urlsafe(24)
        env_file = OUT / "test.env"
        env_file.write_text("\n".join([
            f"SLT_IMAGE={IMAGE}",
            f"BASE_IMAGE={base}",
            "WHEELHOUSE=build/wheelhouse",
            f"DEMO_DATA={demo_dir.relative_to(ROOT)}",
            "INSTALL_NPM=0",
            "SLT_PUBLISH_HOST=127.0.0.1",
            f"SLT_PUBLISH_PORT={port}",
            f"SLT_ADMIN_TOKEN={token}",
            # the compose default base (width 0.25, which the shipped demo masks fit); small and
            # fast otherwise: a random extractor (the test variant the worker offers), few
            # evaluation images, frequent checkpoints, a short lease
            "SLT_DEVICE=cpu",
            "SLT_DEMO=1",
            "SLT_SEARCH_FEATURES=random",
            "SLT_EVAL_N=16",
            "SLT_CHECKPOINT_EVERY_S=5",
            "SLT_LEASE_S=15",
            "",
        ]))
        offline = OUT / "offline-build.yml"
        offline.write_text("# test only: the image build gets no network at all\n"
                           "services:\n  api:\n    build:\n      network: none\n")
        stack = Stack(env_file, [ROOT / "docker-compose.yml", offline])
        api = Api(port, token)

        with phase("build"):
            if args.no_build and image_exists(IMAGE):
                log(f"   reusing {IMAGE}")
            else:
                old = inspect(IMAGE, "{{.Id}}") if image_exists(IMAGE) else None
                stack("build", "api")
                if old and old != inspect(IMAGE, "{{.Id}}"):
                    # the superseded test image: 1.6 GB of vfs per rebuild. (Not `image prune`:
                    # it would also drop the untagged deps stage, the slow part of the cache.)
                    run(["docker", "rmi", old], check_rc=False, capture=True, quiet=True)
            size = int(inspect(IMAGE, "{{.Size}}"))
            log(f"   image {IMAGE}: {size / 1e9:.2f} GB")

        with phase("up"):
            stack("down", "-v", "--remove-orphans", check_rc=False)
            stack("up", "-d")
            ready = api.wait_ready(600)
            log(f"   ready: base {ready['base_sha256'][:12]} on {ready['device']}")
            check(inspect(stack.container("redis"), "{{.State.Health.Status}}") == "healthy", "redis healthy")
            check(ready.get("redis") is True, "the API reaches Redis with the generated password")
            for warning in ready.get("warnings", []):
                log(f"   /readyz warns: {warning}")
            check_redis_password(stack)
            check(inspect(stack.container("worker"), "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped",
                  "worker restart policy unless-stopped")

        with phase("demo"):
            names = {d["name"]: d for d in api.json("GET", "/datasets")}
            check({"emoji-google", "emoji-twitter"} <= set(names),
                  f"SLT_DEMO=1 installed the demo datasets from the image ({sorted(names)})")
            deadline = time.monotonic() + 180
            demo_jobs: list[dict] = []
            while time.monotonic() < deadline and len(demo_jobs) < 2:
                demo_jobs = [j for j in api.json("GET", "/jobs") if j["domain"].startswith("emoji-")]
                time.sleep(2)
            check(len(demo_jobs) == 2, "SLT_DEMO=1 queued one search per demo dataset")
            domains = {d["name"]: d for d in api.json("GET", "/domains")}
            for name in ("emoji-google", "emoji-twitter"):
                d = domains.get(name) or {}
                check(any(h["by"] == "shipped" for h in d.get("history", [])),
                      f"domain {name} served at once from its shipped mask {str(d.get('mask_id'))[:12]}")
                (OUT / f"shipped-{name}.png").write_bytes(api.generate(name, seed=3, n=16))
            if args.full_demo:
                for j in demo_jobs:
                    done = api.wait_job(j["job_id"], 7200, every=15)
                    check(done["status"] == "succeeded", f"demo job {j['domain']} succeeded")
                domains = {d["name"] for d in api.json("GET", "/domains")}
                check({"emoji-google", "emoji-twitter"} <= domains, "demo domains served")
                (OUT / "demo-emoji-google.png").write_bytes(api.generate("emoji-google", seed=3, n=4))
            else:
                # a CPU needs many minutes per demo search: cancel them (DELETE /jobs/{id}, admin)
                for j in demo_jobs:
                    st, _, data = api.request("DELETE", f"/jobs/{j['job_id']}", admin=True)
                    check(st in (200, 202), f"DELETE /jobs/{j['job_id'][:8]} ({j['domain']}): HTTP {st}")
                for j in demo_jobs:
                    done = api.wait_job(j["job_id"], 600)
                    check(done["status"] == "cancelled", f"demo job {j['domain']} cancelled ({done.get('note')})")

        with phase("search"):
            st, headers, data = api.request("POST", "/masks", {
                "domain": "compose-a", "dataset": "emoji-google", "preset": "demo",
                "config": {"iterations": args.search_iterations, "batch_size": 4, "seed": 1},
                "promote": True}, admin=True)
            check(st == 202, f"POST /masks accepted (HTTP {st})")
            job_a = json.loads(data)["job_id"]
            check(headers.get("Location", headers.get("location")) == f"/jobs/{job_a}", "Location header")
            st, _, _ = api.request("POST", "/masks", {"domain": "x", "dataset": "emoji-google"})
            check(st in (401, 403), f"POST /masks without the token refused (HTTP {st})")
            done = api.wait_job(job_a, 900)
            check(done["status"] == "succeeded" and bool(done["mask_id"]), f"search succeeded: mask {done['mask_id']}")
            mask_a = done["mask_id"]
            png_a = api.generate("compose-a", seed=7, n=4)
            check(png_a == api.generate("compose-a", seed=7, n=4), "same mask, seed and n: same PNG")
            (OUT / "compose-a.png").write_bytes(png_a)
            log(f"   image: {len(png_a)} bytes -> {OUT / 'compose-a.png'}")

        with phase("crash"):
            job_b = api.json("POST", "/masks", {
                "domain": "compose-b", "dataset": "emoji-twitter", "preset": "demo",
                "config": {"iterations": args.crash_iterations, "batch_size": 4, "seed": 2},
                "promote": True}, admin=True, expect=(202,))["job_id"]
            # mid-search, with at least one checkpoint written (SLT_CHECKPOINT_EVERY_S=5)
            running = api.wait_job(job_b, 1200, until=lambda j: j["status"] != "queued" and
                                   j["iteration"] >= args.crash_at)
            check(running["status"] == "running", f"job running at iteration {running['iteration']}")
            time.sleep(6)  # past a checkpoint interval
            before = api.json("GET", f"/jobs/{job_b}")
            cid = stack.container("worker")
            restarts = int(inspect(cid, "{{.RestartCount}}"))
            crash(cid)
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                if int(inspect(cid, "{{.RestartCount}}")) > restarts and inspect(cid, "{{.State.Running}}") == "true":
                    break
                time.sleep(1)
            check(int(inspect(cid, "{{.RestartCount}}")) > restarts,
                  "restart policy restarted the worker container")
            done = api.wait_job(job_b, 1200)
            check(done["status"] == "succeeded", f"job {job_b[:8]} finished after the crash")
            check(done["attempts"] >= 2, f"it ran again after the crash (attempts {done['attempts']})")
            check((done.get("resumed_from") or 0) > 0,
                  f"resumed from its checkpoint at iteration {done.get('resumed_from')} "
                  f"(was at {before['iteration']} when killed), not from 0")
            mask_b = done["mask_id"]
            png_b = api.generate("compose-b", seed=7, n=4)

        with phase("persistence"):
            aof = stack("exec", "-T", "redis", "sh", "-c", "ls /data", capture=True, quiet=True).stdout
            check("appendonly" in aof, f"redis writes its AOF to the volume ({aof.split()})")
            stack("down")
            stack("up", "-d")
            api.wait_ready(600)
            masks = {m["mask_id"] for m in api.json("GET", "/masks")}
            check({mask_a, mask_b} <= masks, "masks still in the catalog after down/up")
            jobs = {j["job_id"]: j for j in api.json("GET", "/jobs")}
            check(jobs.get(job_a, {}).get("status") == "succeeded" and jobs.get(job_b, {}).get("status") == "succeeded",
                  "jobs still recorded after down/up")
            domains = {d["name"]: d["mask_id"] for d in api.json("GET", "/domains")}
            want = {"compose-a": mask_a, "compose-b": mask_b}
            check(all(domains.get(n) == m for n, m in want.items()),
                  f"domains still point to their masks after down/up ({sorted(domains)})")
            check(api.generate("compose-a", seed=7, n=4) == png_a, "same pixels as before the restart (compose-a)")
            check(api.generate("compose-b", seed=7, n=4) == png_b, "same pixels as before the restart (compose-b)")
        ok = True
    except (TestFailure, subprocess.TimeoutExpired) as e:
        log(f"FAILED: {e}")
        if stack is not None:
            stack.dump()
    finally:
        if stack is not None and not args.keep:
            with phase("teardown"):
                stack("down", "-v", "--remove-orphans", check_rc=False)
        print("\ncompose-test timings:")
        for name, secs, status in TIMINGS:
            print(f"  {name:<12} {secs:8.1f} s  {status}")
        print(f"  {'total':<12} {time.monotonic() - T0:8.1f} s  {'PASSED' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
