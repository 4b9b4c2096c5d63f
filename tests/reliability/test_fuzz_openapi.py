"""Schema-based fuzzing with schemathesis of every operation of the served OpenAPI document,
the admin API included, with and without the bearer tokens, against the real app over HTTP
(``live``).

schemathesis reads ``/openapi.json`` from the running server and generates requests that match
it and requests that break it (its examples, coverage and fuzzing phases), and checks every
response: no 5xx, the status code and body the document declares, rejection of invalid data.
On top of its checks: every 4xx is in OpenAI's error schema. Example counts are bounded
(``EXAMPLES`` per operation and auth variant).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from live import ADMIN_TOKEN, API_KEY, LiveServer, ScoringEngine, assert_openai_error, guarded_app
from prometheus_client import CollectorRegistry
from schemathesis.config import SchemathesisConfig

from babelgate.server.app import create_app
from babelgate.server.metrics import ServerMetrics
from babelgate.server.settings import ServeSettings

EXAMPLES = 25


SETTINGS = {"api_key": API_KEY, "admin_token": ADMIN_TOKEN}
# The document the server serves with these settings, read when the tests are collected
# (schemathesis parametrizes at collection; its fixture-based loader does not run on pytest 9);
# ``test_the_fuzzed_document_is_the_served_one`` checks that the live server serves the same.
DOCUMENT = create_app(ServeSettings(**SETTINGS), ServerMetrics(CollectorRegistry())).openapi()
# The request schemas cannot say all that the server checks (a user turn, a served model, a
# known language code, the context length), so a request the document allows may be a 400; it
# is still never a 5xx, and its body is still OpenAI's error.
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403",
                                                                   "404"]}}}
)  # fmt: skip
schema = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)
bounded = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   phases=[Phase.explicit, Phase.generate],
                   suppress_health_check=list(HealthCheck))  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    app = guarded_app(ScoringEngine(), tmp_path_factory.mktemp("state"), **SETTINGS)
    with LiveServer(app) as server:
        yield server


def test_the_fuzzed_document_is_the_served_one(live: LiveServer) -> None:
    with live.client(None) as http:
        assert http.get("/openapi.json").json() == DOCUMENT


def token_for(path: str) -> str:
    return ADMIN_TOKEN if path.startswith("/admin") else API_KEY


def check(live: LiveServer, case: schemathesis.Case, headers: dict[str, str]) -> int:
    response = case.call_and_validate(base_url=live.url, headers=headers)
    if response.status_code >= 400:
        assert_openai_error(response)
    return response.status_code


@schema.parametrize()
@bounded
def test_every_operation_with_its_token(live: LiveServer, case: schemathesis.Case) -> None:
    check(live, case, {"Authorization": f"Bearer {token_for(case.path)}"})


@schema.parametrize()
@bounded
def test_every_operation_without_a_token(live: LiveServer, case: schemathesis.Case) -> None:
    """Without a token, the API and admin routes answer 401 whatever the request (a method
    the route does not serve: 405), before the body is even parsed."""
    status = check(live, case, {})
    if case.path.startswith(("/v1/", "/admin/")):
        assert status in (401, 405), status
