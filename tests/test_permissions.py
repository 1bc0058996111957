"""Login everywhere; teammates see, only owners (or admins) change; CSRF on forms."""
from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.test import Client
from rest_framework.test import APIClient

from digits_site.asgi import application
from models_app.models import TrainedModel
from tests.conftest import token_client
from tests.factories import make_dataset, make_model
from workers.models import Job

pytestmark = pytest.mark.django_db(transaction=True)


def test_anonymous_api_is_refused():
    assert APIClient().get("/api/jobs/").status_code == 401
    assert APIClient().post("/api/datasets/", {}).status_code == 401


@pytest.mark.parametrize("url", ["/", "/datasets/new/", "/models/new/", "/profile/"])
def test_anonymous_pages_redirect_to_login(url):
    response = Client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_teammate_sees_owner_jobs(owner, teammate):
    dataset = make_dataset(owner, name="owners-data")
    model = make_model(owner, dataset, name="owners-model")
    client = Client()
    client.force_login(teammate)
    assert "owners-data" in client.get(f"/datasets/{dataset.pk}/").content.decode()
    page = client.get(f"/models/{model.pk}/").content.decode()
    assert "owners-model" in page and 'id="abort"' not in page and "Delete" not in page
    api = token_client(teammate)
    assert api.get(f"/api/models/{model.pk}/").json()["job"]["owner"] == "owner"


def test_stranger_cannot_delete_or_abort(owner, stranger):
    dataset = make_dataset(owner)
    model = make_model(owner, dataset, status="running")
    api = token_client(stranger)
    assert api.delete(f"/api/models/{model.pk}/").status_code == 403
    assert api.post(f"/api/models/{model.pk}/abort/").status_code == 403
    assert api.delete(f"/api/datasets/{dataset.pk}/").status_code == 403
    client = Client()
    client.force_login(stranger)
    assert client.post(f"/models/{model.pk}/delete/").status_code == 403
    assert Job.objects.get(pk=model.pk).status == "running"


def test_owner_deletes_model_and_its_files(owner):
    dataset = make_dataset(owner)
    model = make_model(owner, dataset)
    directory = model.directory
    (directory / "snapshot_epoch_1.pt").write_bytes(b"x")
    assert token_client(owner).delete(f"/api/models/{model.pk}/").status_code == 204
    assert not TrainedModel.objects.filter(pk=model.pk).exists()
    assert not directory.exists()


def test_admin_may_delete_anything(owner, admin_user):
    dataset = make_dataset(owner)
    assert token_client(admin_user).delete(f"/api/datasets/{dataset.pk}/").status_code == 204


def test_dataset_in_use_cannot_be_deleted(owner):
    dataset = make_dataset(owner)
    make_model(owner, dataset, name="uses-it")
    response = token_client(owner).delete(f"/api/datasets/{dataset.pk}/")
    assert response.status_code == 409  # a conflict with the model that uses it
    assert "uses-it" in response.json()["detail"]
    assert dataset.directory.exists()


def test_forms_need_csrf(owner):
    dataset = make_dataset(owner)
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.post(f"/datasets/{dataset.pk}/delete/").status_code == 403
    assert Job.objects.filter(pk=dataset.pk).exists()


def test_profile_creates_an_api_token(owner):
    client = Client()
    client.force_login(owner)
    client.post("/profile/token/")
    key = owner.auth_token.key
    assert key in client.get("/profile/").content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/jobs/").status_code == 200


def test_token_endpoint(owner):
    response = APIClient().post("/api/token/", {"username": "owner", "password": "pw-owner"})
    assert response.status_code == 200 and len(response.json()["token"]) == 40


def test_websocket_refuses_anonymous_users(owner):
    dataset = make_dataset(owner)

    async def connect() -> tuple[bool, object]:
        communicator = WebsocketCommunicator(application, f"/ws/jobs/{dataset.pk}/", headers=[(b"origin", b"http://testserver")])
        connected, code = await communicator.connect()
        await communicator.disconnect()
        return connected, code

    connected, code = asyncio.run(connect())
    assert not connected and code == 4401


def test_openapi_schema_describes_the_endpoints(owner):
    response = token_client(owner).get("/api/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in ("/api/datasets/", "/api/models/", "/api/models/{id}/classify/", "/api/models/{id}/download/"):
        assert path in paths
