"""The container image: its Dockerfile read statically (there is no docker here to build it), and
the service run the way the image runs it.

The run test starts the image's ENTRYPOINT with the image's environment, as the image's numeric
user with no privileges left (setpriv: no new privileges, no capabilities), in a mount namespace
of its own where the root filesystem is read-only and only the image's VOLUME directories are
writable, as in the pod (readOnlyRootFilesystem plus emptyDirs). HOME is an unwritable directory.
It needs root (to set that up), which CI has; anything missing fails the test.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient

from benchmarks.harness.records import sample
from overhead_service import cli
from tests.support import ROOT
from tests.support.container import Stage, dockerignore_excludes, gunicorn_settings, read_ignore, stages

pytestmark = pytest.mark.gunicorn

DOCKERFILE = ROOT / "Dockerfile"
BENCHMARK_CONTAINERFILE = ROOT / "deploy" / "benchmark" / "Containerfile"
VENV = "/opt/overhead-service"  # where the build stage puts the virtual environment
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # the base image's PATH


def _image() -> Stage:
    return stages(DOCKERFILE.read_text())[-1]


def _user(stage: Stage) -> tuple[int, int]:
    instruction = stage.last("USER")
    assert instruction is not None, "the image must not run as root by default"
    user, _, group = instruction.arguments.partition(":")
    assert user.isdigit() and group.isdigit(), "numeric, so that the kubelet can verify runAsNonRoot"
    return int(user), int(group)


def _sqlite_directory(url: str) -> str:
    assert url.startswith("sqlite:////"), url
    return str(Path(url.removeprefix("sqlite:///")).parent)


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# --- the Dockerfile -------------------------------------------------------------------------------


def test_the_image_runs_unprivileged_with_the_packaged_gunicorn_settings() -> None:
    all_stages = stages(DOCKERFILE.read_text())
    assert len(all_stages) >= 2, "multi-stage: the build stage's tools stay out of the image"
    image = all_stages[-1]
    user, group = _user(image)
    assert user >= 10000 and group >= 10000  # non-zero, and clear of the base image's system ids
    assert image.exec_form("ENTRYPOINT") == ["overhead-service", "serve"]
    assert image.last("CMD") is None  # arguments come from the pod (or docker run), if any
    # serve runs gunicorn with the packaged settings module, on the port the manifests use.
    argv = cli.gunicorn_argv("0.0.0.0:8080", None)
    assert argv[argv.index("--config") + 1] == "python:overhead_service.gunicorn_conf"
    assert gunicorn_settings("bind")["bind"] == ["0.0.0.0:8080"]
    assert image.all("EXPOSE")[-1].arguments == "8080"
    # The final stage only copies the built environment in; no compilers, no package installs.
    run_lines = " ".join(i.arguments for i in image.all("RUN"))
    for tool in ("apt-get", "pip ", "gcc", "build-essential", "apk "):
        assert tool not in run_lines
    copies = [i.arguments for i in image.all("COPY")]
    assert copies == [f"--from={all_stages[0].name} {VENV} {VENV}"]
    assert image.base == all_stages[0].base  # the same Python at the same path in both stages


def test_every_path_the_service_writes_is_a_volume() -> None:
    image = _image()
    env = image.env({"PATH": HOST_PATH})
    volumes = image.exec_form("VOLUME") or []
    multiproc = env["PROMETHEUS_MULTIPROC_DIR"]
    written = {
        "PROMETHEUS_MULTIPROC_DIR": multiproc,
        "MPLCONFIGDIR": env["MPLCONFIGDIR"],  # matplotlib's font cache
        "TMPDIR": env["TMPDIR"],
        "HOME": env["HOME"],
        "the SQLite database": _sqlite_directory(env["OVERHEAD_DATABASE_URL"]),
        "WORKDIR": image.all("WORKDIR")[-1].arguments,
    }
    for what, path in written.items():
        assert any(_under(path, volume) for volume in volumes), f"{what} ({path}) is not on a volume"
    # Each volume is there for a reason (no stray writable paths), and the multiproc directory is
    # a volume of its own: an emptyDir of medium Memory in the pod.
    assert sorted(volumes) == sorted({"/tmp", multiproc, written["the SQLite database"]})
    # gunicorn's heartbeat files go to /dev/shm (a tmpfs in every container), its control socket
    # is off (it would go under HOME).
    gunicorn = gunicorn_settings("worker_tmp_dir", "control_socket_disable")
    assert gunicorn == {"worker_tmp_dir": "/dev/shm", "control_socket_disable": True}
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # byte-code is compiled in the build stage
    assert env["PATH"].split(":")[0] == f"{VENV}/bin"


@pytest.mark.parametrize("containerfile", [DOCKERFILE, BENCHMARK_CONTAINERFILE], ids=lambda p: p.name)
def test_the_build_context_holds_what_the_images_copy_and_nothing_local(containerfile: Path) -> None:
    """Both images are built from the repository root, so one .dockerignore serves them."""
    patterns = read_ignore(ROOT / ".dockerignore")
    for stage in stages(containerfile.read_text()):
        for copy in stage.all("COPY"):
            if copy.arguments.startswith("--from="):
                continue
            *sources, _destination = copy.arguments.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not dockerignore_excludes(patterns, source), f"{source} is left out of the context"
                for file in (ROOT / source).rglob("*") if (ROOT / source).is_dir() else ():
                    relative = file.relative_to(ROOT).as_posix()
                    if "__pycache__" not in relative:
                        assert not dockerignore_excludes(patterns, relative), relative
    for local in (".git", ".venv", "var/overhead.db", "tests/conftest.py", "overhead_service/__pycache__"):
        assert dockerignore_excludes(patterns, local), local


# --- the service, run as the image runs it ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Container:
    """The image's ENTRYPOINT, environment, user and filesystem, approximated on this machine."""

    def __init__(self, root: Path) -> None:
        image = _image()
        self.uid, self.gid = _user(image)
        self.volumes = {
            volume: root / "volumes" / volume.strip("/").replace("/", "_")
            for volume in image.exec_form("VOLUME") or []
        }
        home = root / "home"  # exists, but the service's user may not write to it
        home.mkdir(mode=0o555)
        secrets = root / "secrets"
        secrets.mkdir(mode=0o755)
        self.token = "image-test-ingest-token-0123456789"
        tokens = secrets / "tokens.json"
        tokens.write_text(json.dumps({"tokens": [{"name": "bench", "role": "ingest", "token": self.token}]}))
        tokens.chmod(0o444)  # as a Secret volume's default mode
        for directory in self.volumes.values():
            directory.mkdir(parents=True, mode=0o755)
            os.chown(directory, self.uid, self.gid)  # what fsGroup does for an emptyDir

        # Image paths to this machine's, in one pass (a mapped path is not mapped again).
        places = {VENV: sys.prefix, **{volume: str(d) for volume, d in self.volumes.items()}}
        pattern = re.compile(
            r"(?<![\w.-])(" + "|".join(map(re.escape, sorted(places, key=len, reverse=True))) + r")(?=/|:|$)"
        )

        def mapped(value: str) -> str:
            return pattern.sub(lambda match: places[match.group(1)], value)

        self.env = {name: mapped(value) for name, value in image.env({"PATH": HOST_PATH}).items()}
        self.env.update(HOME=str(home), OVERHEAD_TOKENS_FILE=str(tokens))
        self.workdir = mapped(image.all("WORKDIR")[-1].arguments)
        self.entrypoint = image.exec_form("ENTRYPOINT") or []
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = root / "container.log"  # outside the container's view of the world
        self.process: subprocess.Popen[bytes] | None = None
        self.graceful_timeout = float(gunicorn_settings("graceful_timeout")["graceful_timeout"])

    def argv(self) -> list[str]:
        # The pod's securityContext: this uid/gid, no supplementary groups, no privilege escalation
        # (no_new_privs), every capability dropped.
        unprivileged = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        unprivileged += ["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]
        command = [*self.entrypoint, "--bind", f"127.0.0.1:{self.port}", "--workers", "2"]
        # Bind each volume onto itself first: the remount below makes only the root mount read-only.
        script = "set -e; " + self._reachable_interpreter()
        script += "".join(
            f"mount --bind {shlex.quote(str(d))} {shlex.quote(str(d))}; " for d in self.volumes.values()
        )
        script += "mount -o remount,bind,ro /; exec " + shlex.join([*unprivileged, *command])
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]

    def _reachable_interpreter(self) -> str:
        """Shell commands that let the service's user reach this machine's Python (the image has
        its own under /usr/local): an installation under a directory closed to others (pyenv under
        /root) is bind-mounted onto the same path on a fresh tmpfs that hides the rest of it."""
        prefix = Path(sys.base_prefix).resolve()
        closed = next((d for d in reversed(prefix.parents) if not d.stat().st_mode & 0o001), None)
        if closed is None:
            return ""
        stage = shlex.quote(str(self.log.parent / "interpreter"))
        path, hidden = shlex.quote(str(prefix)), shlex.quote(str(closed))
        return (
            f"mkdir {stage}; mount --bind {path} {stage}; "
            f"mount -t tmpfs -o mode=0755,size=1m tmpfs {hidden}; mkdir -p {path}; "
            f"mount --bind {stage} {path}; mount -o remount,ro {hidden}; "
        )

    def start(self, timeout: float = 60) -> None:
        for tool in ("unshare", "setpriv", "mount"):
            assert shutil.which(tool), f"{tool} (util-linux) is needed to run the image test"
        assert os.geteuid() == 0, "the image test sets up a mount namespace: run it as root (CI does)"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv(), cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited with {self.process.returncode}:\n{self.output()}")
            try:
                if requests.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer within {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM, as the kubelet sends it; the status gunicorn exits with."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=self.graceful_timeout + 10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"not stopped by SIGTERM:\n{self.output()}") from None
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


@pytest.fixture
def container() -> Iterator[_Container]:
    # Not pytest's tmp_path: its parent is private to root, and the service's user must reach in.
    root = Path(tempfile.mkdtemp(prefix="overhead-image-", dir="/tmp"))
    root.chmod(0o755)
    running = _Container(root)
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.process.kill()
            running.process.wait()
        shutil.rmtree(root)


def test_the_service_runs_as_the_image_runs_it(
    container: _Container, client: FlaskClient, vmi: dict[str, Any]
) -> None:
    container.start()
    base = container.base_url
    assert container.process is not None
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{container.process.pid}/status").read_text().splitlines()
    )
    assert status["Uid"].split()[:2] == [str(container.uid)] * 2  # gunicorn's master, exec'd
    assert status["NoNewPrivs"].strip() == "1" and int(status["CapEff"], 16) == 0
    ready = requests.get(f"{base}/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"

    # The hot path answers exactly what the in-process application answers.
    answer = requests.post(f"{base}/v1/overhead", json={"vmi": vmi}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.json() == client.post("/v1/overhead", json={"vmi": vmi}).get_json()

    # A write with the token from the mounted file lands in the SQLite database on its volume.
    headers = {"Authorization": f"Bearer {container.token}"}
    stored = requests.post(
        f"{base}/v1/measurements", json={"records": [sample(1)]}, headers=headers, timeout=10
    )
    assert stored.status_code == 200, stored.text
    assert stored.json()["stored"] == 1
    database = Path(_sqlite_directory(container.env["OVERHEAD_DATABASE_URL"])) / "overhead.db"
    assert database.is_file() and database.stat().st_uid == container.uid

    # The HTML report draws with matplotlib, whose caches must go to MPLCONFIGDIR.
    report = requests.get(f"{base}/v1/tables/kubevirt-v1.9.0/report", timeout=60)
    assert report.status_code == 200, report.text[:2000]
    assert report.headers["Content-Type"].startswith("text/html")

    # Prometheus metrics from every worker go through the multiprocess directory.
    metrics = requests.get(f"{base}/metrics", timeout=10)
    assert metrics.status_code == 200, metrics.text[:2000]
    assert any(Path(container.env["PROMETHEUS_MULTIPROC_DIR"]).glob("*.db"))

    assert container.stop() == 0  # a graceful shutdown
    output = container.output()
    # Nothing tried to write where the image cannot (gunicorn's control socket under HOME,
    # byte-code, caches): such failures are logged, not fatal, so look for them.
    for trouble in ("Read-only file system", "Permission denied", "Control server error", "Traceback"):
        assert trouble not in output, output
