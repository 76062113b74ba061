"""schemathesis against the live server: gunicorn (2 workers, the project's settings) on loopback,
every operation of openapi.yaml over real HTTP, with every check schemathesis has.

The in-process test (tests/web/test_openapi.py) drives the Flask app directly; this one goes through
gunicorn's HTTP parsing, keep-alive connections, its worker processes and the database shared
between them, which the in-process test never exercises.

One check is narrowed, and as little as possible: schemathesis' ``positive_data_acceptance`` still
runs as is (with its own allowances: 404 for an unknown id, 409 for a state conflict, 401/403 for
credentials), and only its failures for a 422 problem document that names a rule a schema cannot
state are forgiven (``semantic_problem`` in tests/support/__init__.py: an unknown table id, a ratio Go cannot
parse, an overhead overflowing 64 bits, inconsistent measurement records, too few measurements for
a fit). Any other rejection of schema-valid data still fails, as does every other check.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from benchmarks.harness.server import GunicornServer
from benchmarks.harness.tokens import ADMIN_TOKEN, TOKENS
from overhead_service import jsonio
from tests.support import ROOT, semantic_problem

pytestmark = pytest.mark.gunicorn

SPEC = ROOT / "openapi.yaml"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

schema = schemathesis.openapi.from_path(SPEC, config=SchemathesisConfig.from_dict({"seed": 20261127}))


def positive_data_accepted_unless_semantic(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis' own positive_data_acceptance, forgiving only a semantic 422 (see above).

    Not registered with ``@schemathesis.check``: registered checks run for every schema in the
    session, and this one must not change what tests/web/test_openapi.py checks."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except AssertionError:  # schemathesis' failures are AssertionErrors
        if response.status_code == 422 and semantic_problem(jsonio.loads(response.content)):
            return None
        raise


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    url = f"sqlite:///{tmp_path_factory.mktemp('live') / 'overhead.db'}"
    with GunicornServer(url, tokens=TOKENS, workers=2) as server:
        yield server


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:  # keep-alive, as virt-controller's client keeps its connections
        yield http


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_live_server_conforms_to_spec(
    case: schemathesis.Case[Any], live_server: GunicornServer, session: requests.Session
) -> None:
    """All checks, against gunicorn, with the admin token (every role; ignored_auth also probes
    each secured operation without it and with a wrong one)."""
    case.call_and_validate(
        base_url=live_server.base_url,
        session=session,
        headers=AUTH,
        timeout=30,
        excluded_checks=[positive_data_acceptance],
        additional_checks=[positive_data_accepted_unless_semantic],
    )


def test_live_server_stateful_sequences(live_server: GunicornServer, session: requests.Session) -> None:
    """Sequences along the links schemathesis infers from the spec (a table listed, then fetched;
    a table named by a render, then evaluated, activated, rolled back): the same checks, and the
    stateful ones (use_after_free, ensure_resource_availability) get something to look at."""
    call_kwargs = {"base_url": live_server.base_url, "session": session, "headers": AUTH, "timeout": 30}

    class LiveStateMachine(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case[Any]) -> dict[str, Any]:
            return dict(call_kwargs)

        def validate_response(
            self, response: Any, case: schemathesis.Case[Any], additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response,
                headers=AUTH,
                excluded_checks=[positive_data_acceptance],
                additional_checks=[positive_data_accepted_unless_semantic, *(additional_checks or [])],
                transport_kwargs=kwargs,
                recorder=self.recorder,
            )

    LiveStateMachine.run(
        settings=settings(
            max_examples=40,
            stateful_step_count=8,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
    )
