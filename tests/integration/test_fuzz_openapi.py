"""Property-based fuzzing of the reward service's OpenAPI schema: no input gives a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from reward_service.app import create_app
from reward_service.settings import RewardSettings

app = create_app(RewardSettings(rewards=["jpeg_compressibility", "jpeg_incompressibility"],
                                api_token="fuzz", max_batch=16, max_side=512))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def live_url():
    from tests.conftest import serve_in_thread

    with serve_in_thread(app) as url:
        assert app.state.rewards.ready.wait(30)
        yield url


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_5xx_for_any_input(case, live_url):
    for headers in ({"Authorization": "Bearer fuzz"}, {}):
        response = case.call(base_url=live_url, headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        if response.status_code >= 400 and case.path != "/metrics":
            assert set(response.json()) == {"error"}, response.text[:300]
