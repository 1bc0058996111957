"""The OpenAPI schema tells the truth: schemathesis generates requests from it for the
main endpoints and checks every real response (no server error, documented status codes,
content types and bodies that match the schema)."""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import schemathesis
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from schemathesis.checks import negative_data_rejection, positive_data_acceptance

from tests.conftest import token_client
from tests.factories import make_dataset, make_model

_document = json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))
schema = schemathesis.openapi.from_dict(_document)
schema.app = WSGIHandler()

# Not here: the schema itself, uploads' raw chunks, and operations that start child
# processes (visualize, classify) or stream archives; their own tests cover them.
SKIPPED = ("/api/schema/", "/api/uploads/", "/api/networks/visualize/", "/api/models/{id}/classify/", "/api/models/{id}/download/", "/api/token/")


@pytest.fixture
def _keep_the_test_connection() -> Iterator[None]:
    """A WSGI request closes the database connection when it ends; the test's transaction
    needs it open (Django's own test client does the same)."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def auth(db, owner, teammate, admin_user, _keep_the_test_connection) -> dict[str, str]:
    """Something to find: datasets and models of two users, with snapshots; the requests
    come from an admin, so every operation is allowed and its real body is checked."""
    dataset = make_dataset(owner, name="schema-ds")
    make_model(owner, dataset, name="schema-model")
    make_model(teammate, make_dataset(teammate, name="other-ds"), name="other-model", status="running")
    token = token_client(admin_user)._credentials["HTTP_AUTHORIZATION"]
    return {"Authorization": token}


@schema.exclude(path_regex="|".join(p.replace("{", r"\{").replace("}", r"\}") for p in SKIPPED)).parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@pytest.mark.django_db
def test_responses_match_the_schema(case, auth) -> None:
    # Every response check; not the two that judge input validation by the schema alone
    # (a folder that exists on the server, a dataset that is built: rules no schema can
    # state; and lenient query parameters, such as a page size out of range, that fall
    # back to the default).
    case.call_and_validate(headers=auth, excluded_checks=[positive_data_acceptance, negative_data_rejection])


@pytest.mark.django_db
def test_api_docs_work_offline(owner) -> None:
    """Swagger UI and Redoc come from drf-spectacular-sidecar, served by this server: no CDN."""
    import re

    from django.test import Client

    client = Client()
    client.force_login(owner)
    for url in ("/api/docs/", "/api/redoc/"):
        page = client.get(url).content.decode()
        scripts = re.findall(r'src="([^"]+\.js)"', page)
        assert scripts and all(s.startswith("/static/drf_spectacular_sidecar/") for s in scripts), scripts
        for script in scripts:
            response = client.get(script)
            assert response.status_code == 200, script
            assert len(b"".join(response.streaming_content if response.streaming else [response.content])) > 10_000
