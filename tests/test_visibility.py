"""Teams and visibility, as a permission matrix: the owner, a teammate, a team admin,
someone of another team, a site admin and an anonymous visitor, against every kind of
page and endpoint of one object, for a private, a team and a public model; lists show
each one what they may see; changes need the owner, a team admin or a site admin."""
from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.test import Client

from tests.conftest import token_client
from tests.factories import make_dataset, make_model
from workers.models import Job, TeamAdmin

pytestmark = pytest.mark.django_db

PAGES = ["/models/{pk}/", "/models/{pk}/?epoch=1", "/jobs/{pk}/log/", "/jobs/{pk}/log/?download=1"]
API = [
    "/api/models/{pk}/", "/api/jobs/{pk}/", "/api/models/{pk}/metrics/", "/api/models/{pk}/metrics/csv/",
    "/api/models/{pk}/evaluations/", "/api/models/{pk}/exports/", "/api/jobs/{pk}/log/",
]
# Who sees a model of each visibility (the owner and site admins see everything).
SEES = {
    "private": {"owner", "admin"},
    "team": {"owner", "teammate", "team_admin", "admin"},
    "public": {"owner", "teammate", "team_admin", "outsider", "admin"},
}


@pytest.fixture
def people(owner, teammate, admin_user, django_user_model) -> dict:
    vision, speech = Group.objects.create(name="vision"), Group.objects.create(name="speech")
    outsider = django_user_model.objects.create_user("outsider", password="pw-outsider-1")
    lead = django_user_model.objects.create_user("lead", password="pw-lead-1")
    owner.groups.add(vision)
    teammate.groups.add(vision)
    lead.groups.add(vision)
    outsider.groups.add(speech)
    TeamAdmin.objects.create(team=vision, user=lead)
    return {"owner": owner, "teammate": teammate, "team_admin": lead, "outsider": outsider, "admin": admin_user}


@pytest.fixture
def models(people) -> dict:
    dataset = make_dataset(people["owner"], name="vision-data")
    Job.objects.filter(pk=dataset.pk).update(visibility="public")
    made = {}
    for visibility in SEES:
        model = make_model(people["owner"], dataset, name=f"{visibility}-model")
        Job.objects.filter(pk=model.pk).update(visibility=visibility)
        model.job.log_path.write_text("epoch 1/2 ...\n")
        made[visibility] = model.pk
    return made


def page_client(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.mark.parametrize("visibility", list(SEES))
def test_who_sees_one_object_on_every_page_and_endpoint(people, models, visibility) -> None:
    pk = models[visibility]
    owner_pages = {url: page_client(people["owner"]).get(url.format(pk=pk)).status_code for url in PAGES}
    owner_api = {url: token_client(people["owner"]).get(url.format(pk=pk)).status_code for url in API}
    assert all(code == 200 for code in [*owner_pages.values(), *owner_api.values()]), (owner_pages, owner_api)
    for role, user in people.items():
        for url in PAGES:
            code = page_client(user).get(url.format(pk=pk)).status_code
            assert code == (200 if role in SEES[visibility] else 404), (role, url, code)
        for url in API:
            code = token_client(user).get(url.format(pk=pk)).status_code
            assert code == (200 if role in SEES[visibility] else 404), (role, url, code)
    # Anonymous: the login page, or 401 from the API.
    for url in PAGES:
        response = page_client(None).get(url.format(pk=pk))
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]
    for url in API:
        assert Client().get(url.format(pk=pk)).status_code in (401, 403)


def test_lists_show_each_one_what_they_may_see(people, models) -> None:
    expected = {role: {models[v] for v in SEES if role in SEES[v]} for role in people}
    for role, user in people.items():
        api = token_client(user)
        listed = {row["id"] for row in api.get("/api/models/?page_size=100").json()["results"]}
        assert listed == expected[role], role
        jobs = {row["id"] for row in api.get("/api/jobs/?kind=model&page_size=100").json()["results"]}
        assert jobs == expected[role], role
        page = page_client(user).get("/models/").content.decode()
        for visibility, pk in models.items():
            assert (f"{visibility}-model" in page) == (pk in expected[role]), (role, visibility)
        home = page_client(user).get("/").content.decode()
        assert ("private-model" in home) == (role in ("owner", "admin")), role
        # Comparing: only runs one may see.
        pair = f"{models['team']},{models['public']}"
        compared = api.get(f"/api/models/compare/?ids={pair}")
        assert compared.status_code == (200 if models["team"] in expected[role] else 400), role


def test_changes_need_the_owner_a_team_admin_or_a_site_admin(people, models) -> None:
    pk = models["team"]
    expected = {"owner": 200, "team_admin": 200, "admin": 200, "teammate": 403, "outsider": 404}
    for role, user in people.items():
        response = token_client(user).patch(f"/api/models/{pk}/", {"notes": f"by {role}"}, format="json")
        assert response.status_code == expected[role], (role, response.content)
    assert Job.objects.get(pk=pk).notes == "by admin"
    # The owner makes it private: the teammate no longer sees it, the team admin still may change it.
    owner = token_client(people["owner"])
    assert owner.patch(f"/api/models/{pk}/", {"visibility": "private"}, format="json").json()["job"]["visibility"] == "private"
    assert token_client(people["teammate"]).get(f"/api/models/{pk}/").status_code == 404
    assert owner.patch(f"/api/models/{pk}/", {"visibility": "everyone"}, format="json").status_code == 400
    # Someone of another team cannot train on a dataset they may not see.
    dataset_id = Job.objects.get(name="vision-data").pk
    Job.objects.filter(pk=dataset_id).update(visibility="team")
    refused = token_client(people["outsider"]).post("/api/models/", {"name": "x", "dataset": dataset_id}, format="json")
    assert refused.status_code == 400 and "dataset" in refused.json()["errors"]
    fine = token_client(people["teammate"]).post("/api/models/", {"name": "y", "dataset": dataset_id, "epochs": 1}, format="json")
    assert fine.status_code == 201, fine.content


def test_the_shared_queue_does_not_give_away_the_names_of_private_jobs(people, models) -> None:
    dataset = make_dataset(people["owner"], name="for-the-queue")
    secret = make_model(people["owner"], dataset, name="secret-run", status="queued")
    Job.objects.filter(pk=secret.pk).update(visibility="private")
    names = {role: [r["name"] for r in token_client(user).get("/api/queue/").json()["results"] if r["job"] == secret.pk]
             for role, user in people.items()}
    assert names["owner"] == names["admin"] == ["secret-run"]
    assert names["teammate"] == names["outsider"] == ["(not shared with you)"]


def test_ids_in_query_strings_and_bodies_are_checked_too(people, models) -> None:
    """Clone (?clone=), bulk actions (ids in the body) and sweeps (a dataset id) see only
    what the user may see, as the object's own pages do."""
    private = models["private"]
    teammate = page_client(people["teammate"])
    assert teammate.get(f"/models/new/?clone={private}").status_code == 404
    assert page_client(people["owner"]).get(f"/models/new/?clone={private}").status_code == 200
    bulk = token_client(people["team_admin"]).post("/api/jobs/bulk/", {"ids": [private], "action": "abort"}, format="json")
    assert bulk.status_code == 200 and bulk.json()["skipped"] == [{"id": private, "reason": "no such job"}]
    dataset_id = Job.objects.get(name="vision-data").pk
    Job.objects.filter(pk=dataset_id).update(visibility="private")
    sweep = token_client(people["outsider"]).post("/api/sweeps/", {
        "name": "s", "dataset": dataset_id, "space": {"learning_rate": {"values": [0.1, 0.01]}}, "max_trials": 2,
    }, format="json")
    assert sweep.status_code == 400 and "dataset" in sweep.json()["errors"], sweep.content
