"""The typed client's answers and failures: JSON as sent, the Kubernetes Status in every error,
timeouts and the exec output bound, against the fake API server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from overhead_service.kube import Access, KubeApiError
from overhead_service.kube.client import VMIS, KubeApi, connect
from tests.support.kube import TOKEN, Exec, FakeApiServer, FakeRequest, Reply, status

OUTPUT = b"line of output\n" * 1000
release = threading.Event()


def route(request: FakeRequest) -> Reply | Exec:
    if request.upgrade:
        hold = release if request.query["command"] == ["sleep"] else None
        return Exec(OUTPUT, b"", {"metadata": {}, "status": "Success"}, hold=hold)
    if request.path == "/api/v1/nodes/slow":
        release.wait(10)
        return Reply(200, {"metadata": {"name": "slow"}})
    if request.path == "/api/v1/nodes/busy":
        return Reply(429, status(429, "TooManyRequests", "slow down"), headers={"Retry-After": "7"})
    if request.path == "/api/v1/nodes/text":
        return Reply(200, "not json", "text/plain")
    if request.path.startswith("/api/v1/nodes/"):
        return Reply(200, {"metadata": {"name": request.path.rsplit("/", 1)[1]}, "extra": {"kept": True}})
    return Reply(404, status(404, "NotFound", f"{request.path.rsplit('/', 1)[1]} not found"))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[KubeApi]:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    release.clear()
    with FakeApiServer(route) as server:
        client = connect(Access(api_server=server.url, token_file=str(token)))
        try:
            yield client
        finally:
            release.set()
            client.close()


def test_answers_are_the_json_sent_and_errors_carry_the_status(api: KubeApi) -> None:
    assert api.get_node("n1", timeout=5) == {"metadata": {"name": "n1"}, "extra": {"kept": True}}
    with pytest.raises(KubeApiError) as missing:
        api.get_object(VMIS, "ns", "gone", timeout=5)
    error = missing.value
    assert (error.status, error.reason, error.message) == (404, "NotFound", "gone not found")
    assert str(error) == "get virtualmachineinstances.kubevirt.io/gone -n ns: 404 NotFound: gone not found"
    with pytest.raises(KubeApiError) as busy:
        api.get_node("busy", timeout=5)
    assert (busy.value.status, busy.value.retry_after) == (429, 7.0)
    with pytest.raises(KubeApiError, match="BadResponse: not JSON"):
        api.get_node("text", timeout=5)


def test_a_request_that_gets_no_answer_in_time(api: KubeApi) -> None:
    with pytest.raises(KubeApiError) as caught:
        api.get_node("slow", timeout=0.3)
    assert (caught.value.status, caught.value.reason) == (0, "Timeout")


def test_exec_output_is_bounded_and_a_command_that_does_not_end_times_out(api: KubeApi) -> None:
    result = api.exec("ns", "pod", "compute", ["cat"], timeout=5, max_output=len(OUTPUT))
    assert result.ok and result.stdout.encode() == OUTPUT
    with pytest.raises(KubeApiError) as large:
        api.exec("ns", "pod", "compute", ["cat"], timeout=5, max_output=len(OUTPUT) - 1)
    assert (large.value.status, large.value.reason) == (0, "OutputTooLarge")
    with pytest.raises(KubeApiError) as slow:
        api.exec("ns", "pod", "compute", ["sleep"], timeout=0.3, max_output=len(OUTPUT))
    assert (slow.value.status, slow.value.reason) == (0, "Timeout")
