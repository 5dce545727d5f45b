"""The published OpenAPI schema, exercised by schemathesis against a live gateway (bounded).

The schema is the app's own `/openapi.json` (checked below to be what a live gateway serves).
A dedicated gateway keeps generation tiny (at most 4 tokens, 2 choices) and accepts images only
as data: URLs, so generated requests never make the gateway fetch anything.
"""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from server.app import create_app
from server.config import GatewayConfig, Limits
from tests.gateway_fixtures import API_KEY, gateway_config

pytestmark = pytest.mark.engine

PUBLISHED = create_app(GatewayConfig(model="schema-only")).openapi()
schema = schemathesis.openapi.from_dict(PUBLISHED)


@pytest.fixture(scope="module")
def schema_gateway(start_gateway, gateway_model):
    images = replace(gateway_config(gateway_model).images, fetch_urls=False)
    limits = Limits(max_images=2, max_n=2, max_tokens=4, default_max_tokens=2, max_body_bytes=10**6)
    return start_gateway(limits=limits, images=images)


def test_the_live_gateway_publishes_this_schema(schema_gateway):
    assert httpx.get(schema_gateway.url + "/openapi.json").json() == PUBLISHED


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_endpoint_honours_the_published_schema(case, schema_gateway):
    # Every check but "schema-valid data is accepted": a chat request that fits the schema may
    # still name another model, carry undecodable image data or an inverted region, which no
    # JSON schema can express; those answers are 4xx by design (and tested one by one).
    case.call_and_validate(
        base_url=schema_gateway.url,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
        excluded_checks=[positive_data_acceptance],
    )
