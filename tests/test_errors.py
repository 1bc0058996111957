"""One error model: every endpoint answers with `{"detail": ..., "errors": {field: [...]}}`
and the status that fits (400, 403, 404, 409); pages show the same messages."""
from __future__ import annotations

import pytest
from django.test import Client

from tests.conftest import token_client
from tests.factories import make_dataset, make_model

pytestmark = pytest.mark.django_db


def test_serializer_errors_name_their_fields(owner) -> None:
    dataset = make_dataset(owner)
    response = token_client(owner).post(
        "/api/models/", {"name": "m", "dataset": dataset.pk, "epochs": "many", "learning_rate": -1}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"detail", "errors"}
    assert set(body["errors"]) >= {"epochs", "learning_rate"}
    assert all(isinstance(m, str) for messages in body["errors"].values() for m in messages)
    assert body["detail"].startswith("epochs: ") or "epochs: " in body["detail"]


def test_a_service_error_with_a_field_has_the_same_shape(owner, data_root) -> None:
    response = token_client(owner).post(
        "/api/datasets/", {"name": "d", "folder": "/etc", "image_width": 28, "image_height": 28}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert "outside the allowed data roots" in body["detail"]
    assert body["errors"] == {"folder": [body["detail"]]}


def test_forbidden_not_found_and_conflict(owner, stranger) -> None:
    dataset = make_dataset(owner)
    make_model(owner, dataset, name="uses-it")
    other = token_client(stranger)
    forbidden = other.patch(f"/api/datasets/{dataset.pk}/", {"name": "mine"}, format="json")
    assert forbidden.status_code == 403 and forbidden.json() == {"detail": "Only the owner of this job (or an admin) can change it."}
    missing = other.get("/api/datasets/987654/")
    assert missing.status_code == 404 and set(missing.json()) == {"detail"}
    conflict = token_client(owner).delete(f"/api/datasets/{dataset.pk}/")
    assert conflict.status_code == 409 and "Delete those models first" in conflict.json()["detail"]
    staff_only = other.get("/api/usage/")
    assert staff_only.status_code == 403 and "Only admins" in staff_only.json()["detail"]


def test_pages_show_the_same_messages(owner, stranger) -> None:
    dataset = make_dataset(owner)
    model = make_model(owner, dataset, status="running")
    client = Client()
    client.force_login(stranger)
    refused = client.post(f"/models/{model.pk}/abort/")
    assert refused.status_code == 403
    assert "Only the owner of this job (or an admin) can change it." in refused.content.decode()
    console = client.get("/cluster/")
    assert console.status_code == 403 and "Only admins can use the cluster console." in console.content.decode()


def test_a_64_bit_seed_is_accepted_and_a_larger_one_named(owner) -> None:
    dataset = make_dataset(owner)
    api = token_client(owner)
    too_big = api.post("/api/models/", {"name": "m", "dataset": dataset.pk, "seed": 2**64}, format="json")
    assert too_big.status_code == 400 and "seed" in too_big.json()["errors"]
    huge_id = api.post("/api/models/", {"name": "m", "dataset": 2**70}, format="json")
    assert huge_id.status_code == 400 and "dataset" in huge_id.json()["errors"]
    assert api.get(f"/api/datasets/{2**70}/").status_code == 404
    assert api.get(f"/api/models/{2**70}/download/").status_code == 404
    created = api.post("/api/models/", {"name": "m", "dataset": dataset.pk, "seed": 0xCAFEBABE}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["seed"] == 0xCAFEBABE


def test_exploring_a_dataset_that_did_not_build_says_why(owner) -> None:
    api = token_client(owner)
    aborted = make_dataset(owner, name="stopped", status="aborted")
    response = api.get(f"/api/datasets/{aborted.pk}/images/?split=val")
    assert response.status_code == 404
    assert response.json()["detail"] == "This dataset's build was aborted, so it stored no images. Clone it to build it again."
    building = make_dataset(owner, name="busy", status="running")
    assert "still building" in api.get(f"/api/datasets/{building.pk}/images/").json()["detail"]
    done = make_dataset(owner, name="done")
    missing = api.get(f"/api/datasets/{done.pk}/images/?split=test")
    assert missing.status_code == 404 and missing.json()["detail"] == "This dataset has no test split (it has: train, val)."
    client = Client()
    client.force_login(owner)
    page = client.get(f"/datasets/{aborted.pk}/explore/?split=val")
    assert page.status_code == 404 and "build was aborted" in page.content.decode()


@pytest.mark.django_db
def test_a_request_with_too_many_fields_gets_the_json_error(owner):
    """Django refuses a body of more than 1,000 fields before any view: under /api/ the
    answer is still the API's JSON error, not an HTML page."""
    from tests.conftest import token_client

    body = "&".join(f"f{i}=1" for i in range(1200))
    response = token_client(owner).post("/api/models/import/", body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert "too many fields" in response.json()["detail"]


@pytest.mark.django_db
def test_a_refused_page_logs_one_line(client, owner, teammate, caplog):
    """Someone else's model: the refusal is a page with the reason and one log line,
    without a traceback."""
    import logging

    from tests.factories import make_dataset, make_model

    model = make_model(owner, make_dataset(owner), name="not yours")
    client.force_login(teammate)
    with caplog.at_level(logging.WARNING):
        response = client.post(f"/models/{model.pk}/delete/")
    assert response.status_code == 403 and "Only the owner" in response.content.decode()
    refused = [r for r in caplog.records if "Forbidden" in r.getMessage()]
    assert len(refused) == 1 and refused[0].exc_info is None


@pytest.mark.django_db
def test_a_refused_form_brings_back_its_page_with_the_reason(client, owner, teammate, caplog):
    """A form sent from one of our pages and refused (someone else's model) returns to
    that page, its forms and the message; the refusal is logged once, without a traceback.
    Sent from nowhere (a script), it stays a 403 page."""
    import logging

    from tests.factories import make_dataset, make_model

    model = make_model(owner, make_dataset(owner), name="not yours")
    client.force_login(teammate)
    page = f"http://testserver/models/{model.pk}/"
    with caplog.at_level(logging.WARNING):
        response = client.post(f"/models/{model.pk}/delete/", HTTP_REFERER=page)
    assert response.status_code == 302 and response["Location"] == page
    shown = client.get(page)
    assert shown.status_code == 200
    assert "Only the owner of this job (or an admin) can change it." in shown.content.decode()
    assert f'action="/models/{model.pk}/classify/"' in shown.content.decode()  # its forms are there
    refused = [r for r in caplog.records if "Refused (403)" in r.getMessage()]
    assert len(refused) == 1 and refused[0].exc_info is None and f"/models/{model.pk}/delete/" in refused[0].getMessage()
    assert model.__class__.objects.filter(pk=model.pk).exists()
    # A Referer of another site is not followed: the error page, as without one.
    elsewhere = client.post(f"/models/{model.pk}/delete/", HTTP_REFERER="https://evil.example/page")
    assert elsewhere.status_code == 403 and "Only the owner" in elsewhere.content.decode()


@pytest.mark.django_db
def test_an_expired_form_is_shown_again_with_a_fresh_token(owner):
    """A form whose CSRF token no longer matches (opened before the last log in) comes
    back with what to do, and sending it again from that page works."""
    from django.test import Client

    from tests.factories import make_dataset

    dataset = make_dataset(owner, name="before")
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    page = f"http://testserver/datasets/{dataset.pk}/"
    stale = client.post(f"/datasets/{dataset.pk}/edit/", {"name": "after", "csrfmiddlewaretoken": "x" * 64}, HTTP_REFERER=page)
    assert stale.status_code == 302 and stale["Location"] == page
    shown = client.get(page)
    assert "The form had expired" in shown.content.decode() and "send it once more" in shown.content.decode()
    token = shown.cookies["csrftoken"].value if "csrftoken" in shown.cookies else client.cookies["csrftoken"].value
    again = client.post(f"/datasets/{dataset.pk}/edit/", {"name": "after", "group": "", "notes": "", "csrfmiddlewaretoken": token},
                        HTTP_REFERER=page)
    assert again.status_code == 302
    dataset.job.refresh_from_db()
    assert dataset.job.name == "after"
    # Without a page to return to, the error page says what to do.
    bare = Client(enforce_csrf_checks=True)
    bare.force_login(owner)
    refused = bare.post(f"/datasets/{dataset.pk}/edit/", {"name": "x"})
    assert refused.status_code == 403 and "Reload the page it came from" in refused.content.decode()
