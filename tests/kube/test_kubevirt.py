"""The KubeVirt configuration source: the setting, or list + watch against a fake API server.

Each test waits for the state it expects (polling :meth:`current`, bounded at 10 s); nothing
here asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.harness.reviews import admission_review, defaulted_vmi
from overhead_service import config
from overhead_service.clusterconfig import WatchedConfigSource, config_source
from overhead_service.extensions import get_cluster_config
from overhead_service.kube import Access, KubeVirtConfig, KubeVirtConfigSource, choose_kubevirt
from tests.conftest import AppFactory
from tests.support import ROOT
from tests.support.kube import (
    TOKEN,
    FakeApiServer,
    FakeKubeVirts,
    FakeRequest,
    Reply,
    Stream,
    kubevirt,
    wait_for,
)

GATES = {"developerConfiguration": {"featureGates": ["ConfigurableHypervisor"]}}
RATIO = {"additionalGuestMemoryOverheadRatio": "1.5"}


@pytest.fixture
def kubevirts() -> FakeKubeVirts:
    fake = FakeKubeVirts()
    fake.put(kubevirt(configuration=GATES))
    return fake


@pytest.fixture
def apiserver(kubevirts: FakeKubeVirts) -> Iterator[FakeApiServer]:
    with FakeApiServer(kubevirts.route) as server:
        kubevirts.closing = server.closing
        yield server


SourceFactory = Callable[..., KubeVirtConfigSource]


@pytest.fixture
def make_source(tmp_path: Path) -> Iterator[SourceFactory]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    sources: list[KubeVirtConfigSource] = []

    def make(url: str, **options: Any) -> KubeVirtConfigSource:
        settings: dict[str, Any] = {
            "backoff_seconds": 0.01,
            "max_backoff_seconds": 0.05,
            "watch_seconds": 1,
            "request_timeout": 5.0,
        }
        settings.update(options)
        source = KubeVirtConfigSource(access=Access(api_server=url, token_file=str(token)), **settings)
        sources.append(source)
        return source

    yield make
    for source in sources:
        assert source.stop(), "the watch thread did not stop"


def synced(generation: int) -> Callable[[KubeVirtConfig], bool]:
    return lambda s: s.state == "watching" and s.generation == generation


# --- the setting -----------------------------------------------------------------------------------


def test_the_setting_is_the_configuration_and_the_cluster_is_never_asked() -> None:
    """In a fresh interpreter: the app, the kube package and a source from the setting load no
    ``kubernetes`` (the service's start-up cost is unchanged)."""
    script = """
import json, sys
from overhead_service import config, create_app
from overhead_service.kube import KubeVirtConfigSource
settings = config.resolve()
source = KubeVirtConfigSource.from_settings(settings)
create_app({"TOKENS": None, "SYNC_SECONDS": 0, "DATABASE_URL": "sqlite://"})
print(json.dumps({"snapshot": source.current().describe(), "configuration": source.current().configuration,
                  "loaded": "kubernetes" in sys.modules}))
"""
    env = dict(os.environ, OVERHEAD_KUBEVIRT_CONFIGURATION=json.dumps(RATIO | GATES))
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    answer = json.loads(result.stdout.splitlines()[-1])
    assert answer["configuration"] == RATIO | GATES
    assert answer["snapshot"]["state"] == "configured" and answer["snapshot"]["source"] == "setting"
    assert answer["loaded"] is False


@pytest.mark.parametrize("value", ["{not json", '["a"]'])
def test_a_bad_setting_is_a_start_up_error_naming_it(value: str) -> None:
    message = r"environment variable OVERHEAD_KUBEVIRT_CONFIGURATION must be a JSON object \(the KubeVirt CR"
    with pytest.raises(ValueError, match=message):
        config.resolve(environ={"OVERHEAD_KUBEVIRT_CONFIGURATION": value})
    with pytest.raises(ValueError, match="config key KUBEVIRT_CONFIGURATION must be a JSON object"):
        config.resolve({"KUBEVIRT_CONFIGURATION": 3})
    settings = config.resolve({"KUBEVIRT_CONFIGURATION": RATIO, "KUBEVIRT_NAMESPACE": ""})
    assert settings["KUBEVIRT_CONFIGURATION"] == RATIO and settings["KUBEVIRT_NAMESPACE"] is None
    source = KubeVirtConfigSource.from_settings(settings)
    assert source.fixed and source.current().configuration == RATIO
    assert source.stop()  # nothing to stop
    watched = KubeVirtConfigSource.from_settings(
        config.resolve(environ={"OVERHEAD_KUBEVIRT_NAMESPACE": "kv"})
    )
    assert not watched.fixed and watched.namespace == "kv"  # not started: nothing asked yet
    with pytest.raises(ValueError, match="config key KUBEVIRT_NAMESPACE must be a namespace name"):
        config.resolve({"KUBEVIRT_NAMESPACE": 7})


# --- list and watch --------------------------------------------------------------------------------


def test_list_then_watch_follows_every_change(
    apiserver: FakeApiServer, kubevirts: FakeKubeVirts, make_source: SourceFactory
) -> None:
    source = make_source(apiserver.url)
    first = wait_for(source, synced(1))
    assert first.configuration == GATES and first.usable
    assert (first.namespace, first.name, first.resource_version) == ("kubevirt", "kubevirt", "101")
    assert first.synced_at is not None

    kubevirts.put(kubevirt(configuration=GATES | RATIO, generation=2))
    second = wait_for(source, synced(2))
    assert second.configuration == GATES | RATIO and second.resource_version == "102"

    kubevirts.bookmark()  # no change, but proof the watch is alive: synced_at moves on
    before = second.synced_at
    assert before is not None
    assert wait_for(source, lambda s: s.synced_at is not None and s.synced_at > before)
    assert source.current().configuration == GATES | RATIO

    # A second CR that virt-operator has not taken on (no status.phase) changes nothing...
    kubevirts.put(kubevirt("other", "elsewhere", RATIO, phase="", created="2020-01-01T00:00:00Z"))
    # ...and when the active one goes, its configuration stays (as in KubeVirt's components).
    kubevirts.delete("kubevirt", "kubevirt")
    assert wait_for(source, lambda s: s.synced_at is not None and s.resource_version == "102")
    assert source.current().configuration == GATES | RATIO
    # All of it from one list and watches resumed from the last version seen.
    assert kubevirts.lists == [""]
    assert all(int(version) >= 101 for version in kubevirts.watches)
    assert set(apiserver.users) == {"token"}


def test_a_namespace_setting_lists_and_watches_there_only(
    apiserver: FakeApiServer, kubevirts: FakeKubeVirts, make_source: SourceFactory
) -> None:
    kubevirts.put(kubevirt("older", "elsewhere", RATIO, created="2020-01-01T00:00:00Z"))
    source = make_source(apiserver.url, namespace="kubevirt")
    snapshot = wait_for(source, synced(1))
    assert (snapshot.namespace, snapshot.configuration) == ("kubevirt", GATES)
    assert kubevirts.lists == ["kubevirt"]
    assert apiserver.count("GET", "/apis/kubevirt.io/v1/namespaces/kubevirt/kubevirts?") >= 1


def test_watch_failures_keep_the_configuration_and_resume_where_they_stopped(
    apiserver: FakeApiServer, kubevirts: FakeKubeVirts, make_source: SourceFactory
) -> None:
    source = make_source(apiserver.url, backoff_seconds=0.2, max_backoff_seconds=0.2)
    wait_for(source, synced(1))
    # The next two watch requests fail with 500, the one after is cut after one event.
    kubevirts.fail["watch"] = [500, 500]
    kubevirts.drop_after = 1
    kubevirts.end_watches()
    failed = wait_for(source, lambda s: s.state.startswith("error: "))
    assert "500 InternalError: etcd is not answering" in failed.state
    assert failed.configuration == GATES and failed.usable  # the last one seen, still in force
    kubevirts.put(kubevirt(configuration=RATIO, generation=2))
    kubevirts.put(kubevirt(configuration=RATIO | GATES, generation=3))
    snapshot = wait_for(source, synced(3))
    assert snapshot.configuration == RATIO | GATES
    # Never listed again: each watch resumed from the last version seen (101, then 102 after the
    # cut connection delivered generation 2).
    assert kubevirts.lists == [""]
    assert "101" in kubevirts.watches and "102" in kubevirts.watches
    assert kubevirts.watches.index("101") < kubevirts.watches.index("102")


def test_an_expired_resource_version_means_listing_again(
    apiserver: FakeApiServer, kubevirts: FakeKubeVirts, make_source: SourceFactory
) -> None:
    source = make_source(apiserver.url)
    wait_for(source, synced(1))
    # While the watch is away, a change the history no longer holds: only a new list shows it.
    kubevirts.compact(kubevirt(configuration=RATIO, generation=2))
    snapshot = wait_for(source, synced(2))
    assert snapshot.configuration == RATIO
    assert kubevirts.lists == ["", ""]
    assert kubevirts.watches[-1] == "102"  # from the new list's version


def test_api_server_down_at_start(make_source: SourceFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = make_source(f"http://127.0.0.1:{port}")
    first = source.current()  # answers at once: before the first attempt, or after it failed
    assert first.state == "not-yet-synced" or first.state.startswith("error: ")
    down = wait_for(source, lambda s: s.state.startswith("error: "))
    assert "list kubevirts.kubevirt.io -A: Unreachable" in down.state
    assert down.configuration == {} and not down.usable and down.synced_at is None


def test_current_never_waits_for_the_api_server(make_source: SourceFactory) -> None:
    """The list hangs in the API server: current() answers all the same, until it is released."""
    kubevirts = FakeKubeVirts()
    kubevirts.put(kubevirt(configuration=GATES))
    release = threading.Event()

    def slow(request: FakeRequest) -> Reply | Stream:
        release.wait(30)
        return kubevirts.route(request)

    with FakeApiServer(slow) as server:
        kubevirts.closing = server.closing
        source = make_source(server.url, request_timeout=60.0)
        assert source.current().state == "not-yet-synced"
        arrived = threading.Event()
        for _ in range(1000):
            if server.count("GET", "/apis/kubevirt.io/v1/kubevirts"):
                break
            arrived.wait(0.01)
        assert server.count("GET", "/apis/kubevirt.io/v1/kubevirts") == 1  # in flight now
        assert source.current().state == "not-yet-synced"
        release.set()
        assert wait_for(source, synced(1)).configuration == GATES


def test_failing_lists_are_retried_with_the_state_saying_why(
    apiserver: FakeApiServer, kubevirts: FakeKubeVirts, make_source: SourceFactory
) -> None:
    kubevirts.fail["list"] = [503, 503, 503]
    source = make_source(apiserver.url, backoff_seconds=0.2, max_backoff_seconds=0.2)
    down = wait_for(source, lambda s: s.state.startswith("error: "))
    assert "503" in down.state and not down.usable
    assert wait_for(source, synced(1)).configuration == GATES
    assert len(kubevirts.lists) == 1  # the three failures were not recorded as lists


def test_stop_ends_the_thread_promptly(apiserver: FakeApiServer, make_source: SourceFactory) -> None:
    source = make_source(apiserver.url, watch_seconds=600)  # a long watch in flight
    wait_for(source, synced(1))
    assert source.stop(timeout=5.0)
    assert source.current().state == "stopped"
    assert not any(t.name == "kubevirt-config" and t.is_alive() for t in threading.enumerate())
    source.start()  # a stopped source stays stopped
    assert source.current().state == "stopped"


def test_a_forked_child_runs_its_own_watch(apiserver: FakeApiServer, make_source: SourceFactory) -> None:
    source = make_source(apiserver.url)
    wait_for(source, synced(1))
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork of a multi-threaded process
        pid = os.fork()
    if pid == 0:  # the child: report what it sees, then leave without pytest's teardown
        try:
            first = source.current().state
            snapshot = wait_for(source, synced(1))
            report = {"first": first, "then": snapshot.state, "configuration": snapshot.configuration}
            os.write(write, json.dumps(report).encode())
            source.stop()
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        report = json.loads(pipe.read() or "{}")
    os.waitpid(pid, 0)
    assert report == {"first": "not-yet-synced", "then": "watching", "configuration": GATES}
    assert source.current().state == "watching"  # the parent's watch carried on


# --- which CR ----------------------------------------------------------------------------------------


def test_the_cr_chosen_is_an_active_one_the_oldest_first() -> None:
    old = kubevirt("a", "ns2", created="2024-01-01T00:00:00Z")
    young = kubevirt("b", "ns1", created="2025-01-01T00:00:00Z")
    twin = kubevirt("c", "ns1", created="2024-01-01T00:00:00Z")
    unclaimed = kubevirt("d", "ns0", phase="", created="2020-01-01T00:00:00Z")
    deleting = kubevirt("e", "ns0", created="2020-01-01T00:00:00Z")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert choose_kubevirt([young, old, unclaimed, deleting]) is old
    assert choose_kubevirt([young, old, twin]) is twin  # same age: by namespace, then name
    assert choose_kubevirt([unclaimed, deleting]) is None
    assert choose_kubevirt([]) is None


# --- the webhook's source --------------------------------------------------------------------------


def _kubeconfig_for(server: FakeApiServer, path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "current-context": "fake",
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
                "users": [{"name": "fake", "user": {"token": TOKEN}}],
            }
        )
    )
    return path


def test_the_webhook_answers_with_the_watched_configuration(
    apiserver: FakeApiServer,
    kubevirts: FakeKubeVirts,
    app_factory: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """Without KUBEVIRT_CONFIGURATION but with a kubeconfig, the app watches the CR (from its
    creation) and each admission uses the configuration of the moment."""
    ratio = {"additionalGuestMemoryOverheadRatio": "2"}
    kubevirts.put(kubevirt(configuration=ratio, generation=2))
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig_for(apiserver, tmp_path / "kubeconfig")))
    app = app_factory()
    source = get_cluster_config(app)
    assert isinstance(source, WatchedConfigSource)
    try:
        wait_for(source.watch, synced(2))
        assert source.current() == (ratio, "watching")
        review = admission_review(defaulted_vmi(), uid="u1")
        watched = app.test_client().post("/v1/admission/vmi", json=review).get_json()["response"]
        # The same answer as with the configuration given by the setting...
        static = app_factory(KUBEVIRT_CONFIGURATION=json.dumps(ratio))
        expected = static.test_client().post("/v1/admission/vmi", json=review).get_json()["response"]
        assert watched == expected and "patch" in watched
        # ...and another once the CR changes.
        kubevirts.put(kubevirt(configuration={}, generation=3))
        wait_for(source.watch, synced(3))
        changed = app.test_client().post("/v1/admission/vmi", json=review).get_json()["response"]
        assert changed["patch"] != watched["patch"]
    finally:
        assert source.watch.stop()
    # No credentials at all (the tests' default): no watch, no configuration.
    monkeypatch.setenv("KUBECONFIG", os.devnull)
    assert config_source(config.resolve(None, environ={})).current() == (None, "unavailable")
