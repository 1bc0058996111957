"""Sweeps: the search space and its checks, grid order, ask-and-tell with our own rows
(trials made as room frees up, finished trials closed, the best marked), pruning at a
validation, abort; then real sweeps through the workers: a grid from the model form, and
an Optuna sweep with median pruning from the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.test import Client

from models_app.models import Metric, Sweep, SweepStatus, TrainedModel, Trial, TrialState
from models_app.services import model_refresh_best
from models_app.sweeps import grid_combination, parse_space, parse_space_text, sweep_advance, sweep_create, sweep_on_validation
from tests.conftest import ROOT, token_client, wait_for_status
from tests.factories import make_dataset
from tests.test_model_api import built_dataset
from workers.errors import JobError
from workers.models import Job, JobStatus


def test_the_form_box_and_the_space_checks():
    assert parse_space_text("learning_rate = 0.1, 0.01  # two\nsolver = sgd, adam\n\nweight_decay = 1e-6 .. 1e-2 log\n"
                            "batch_size = 16 .. 128 step 16") == {
        "learning_rate": [0.1, 0.01], "solver": ["sgd", "adam"],
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
        "batch_size": {"low": 16, "high": 128, "log": False, "step": 16},
    }
    with pytest.raises(JobError, match="Line 1"):
        parse_space_text("learning_rate 0.1")
    assert parse_space({"batch_size": [16, "32", 16]}, "grid") == {"batch_size": {"values": [16, 32]}}
    for space, mode, message in (
        ({"learning_rate": {"low": 1e-4, "high": 1e-1}}, "grid", "a grid takes lists"),
        ({"learning_rate": {"low": 0, "high": 1e-1, "log": True}}, "optuna", "log range needs low above 0"),
        ({"learning_rate": [0.1, -1]}, "grid", "learning_rate = -1"),
        ({"solver": ["sgd", "lbfgs"]}, "grid", "solver = 'lbfgs'"),
        ({"custom_code": ["x"]}, "grid", "cannot be swept"),
        ({"solver": {"low": 1, "high": 2}}, "random", "takes a list of values"),
        ({}, "grid", "at least one parameter"),
    ):
        with pytest.raises(JobError, match=message):
            parse_space(space, mode)
    space = parse_space({"learning_rate": [0.1, 0.01], "batch_size": [16, 32, 64]}, "grid")
    assert [grid_combination(space, n) for n in (0, 1, 3, 5)] == [
        {"learning_rate": 0.1, "batch_size": 16}, {"learning_rate": 0.1, "batch_size": 32},
        {"learning_rate": 0.01, "batch_size": 16}, {"learning_rate": 0.01, "batch_size": 64},
    ]


def _finish(model_id: int, accuracies: list[float], status: str = JobStatus.DONE) -> None:
    """What a trial's training would have recorded: validations, then its end."""
    Metric.objects.bulk_create(Metric(model_id=model_id, name="val_accuracy", iteration=(e + 1) * 10, epoch=e + 1, value=v)
                               for e, v in enumerate(accuracies))
    model_refresh_best(model_id)
    Job.objects.filter(pk=model_id).update(status=status)


@pytest.mark.django_db
def test_a_grid_keeps_its_budget_and_marks_the_best(owner):
    dataset = make_dataset(owner)
    with pytest.raises(JobError, match="The grid has 6 combinations"):
        sweep_create(owner=owner, name="too big", dataset=dataset, mode="grid", base={"epochs": 1},
                     space={"learning_rate": [0.1, 0.01, 0.001], "batch_size": [16, 32]}, max_trials=4, max_concurrent=2)
    assert not Sweep.objects.exists() and not TrainedModel.objects.exists()
    with pytest.raises(JobError, match="is swept"):
        sweep_create(owner=owner, name="x", dataset=dataset, mode="grid", base={"learning_rate": 0.1},
                     space={"learning_rate": [0.1]}, max_trials=4, max_concurrent=1)

    sweep = sweep_create(owner=owner, name="lr x bs", dataset=dataset, mode="grid", base={"epochs": 1, "network": "lenet"},
                         space={"learning_rate": [0.1, 0.01], "batch_size": [16, 32]}, max_trials=100, max_concurrent=2)
    assert sweep.max_trials == 4  # a grid's size
    trials = list(sweep.trials.order_by("number"))
    assert len(trials) == 2 and all(t.state == TrialState.RUNNING for t in trials)
    first = TrainedModel.objects.get(pk=trials[0].model_id)
    assert (first.learning_rate, first.batch_size, first.epochs) == (0.1, 16, 1) and first.job.group == "sweep: lr x bs"
    assert first.job.status == JobStatus.QUEUED
    _finish(trials[0].model_id, [0.5, 0.7])
    sweep_advance(sweep.pk)  # one finished: one more starts
    assert sweep.trials.count() == 3
    _finish(trials[1].model_id, [], status=JobStatus.ERROR)
    Job.objects.filter(pk=trials[1].model_id).update(error="NaN loss")
    sweep_advance(sweep.pk)
    rest = list(sweep.trials.filter(number__gte=2))
    assert len(rest) == 2
    _finish(rest[0].model_id, [0.9, 0.8])
    _finish(rest[1].model_id, [0.6])
    sweep_advance(sweep.pk)
    sweep.refresh_from_db()
    assert sweep.status == SweepStatus.DONE and sweep.finished_at is not None
    states = {t.number: (t.state, t.value, t.best_epoch) for t in sweep.trials.all()}
    assert states == {0: ("complete", 0.7, 2.0), 1: ("failed", None, None), 2: ("complete", 0.9, 1.0), 3: ("complete", 0.6, 1.0)}
    assert Trial.objects.get(sweep=sweep, number=1).note == "NaN loss"

    api = token_client(owner)
    data = api.get(f"/api/sweeps/{sweep.pk}/").json()
    assert data["best"]["number"] == 2 and data["counts"] == {"running": 0, "complete": 3, "pruned": 0, "failed": 1}
    client = Client()
    client.force_login(owner)
    html = client.get(f"/sweeps/{sweep.pk}/").content.decode()
    assert "Best: <strong>trial #2</strong>" in html and 'id="plot-data"' in html
    body = html.split('id="trials"', 1)[1]
    assert body.index('data-trial="2"') < body.index('data-trial="0"') < body.index('data-trial="3"')  # best first


@pytest.mark.django_db
def test_optuna_asks_within_the_space_and_the_median_rule_prunes(owner, teammate):
    dataset = make_dataset(owner)
    sweep = sweep_create(owner=owner, name="tpe", dataset=dataset, mode="optuna", base={"epochs": 3},
                         space={"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True}, "solver": ["sgd", "adam"]},
                         max_trials=6, max_concurrent=3, pruner="median", seed=7)
    trials = list(sweep.trials.order_by("number"))
    assert len(trials) == 3
    lrs = [t.params["learning_rate"] for t in trials]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs) and len(set(lrs)) == 3
    assert all(t.params["solver"] in ("sgd", "adam") for t in trials)
    for trial, curve in zip(trials[:2], ([0.6, 0.8, 0.9], [0.5, 0.7, 0.85])):
        sweep_on_validation(trial.model_id, {"val_accuracy": [(e + 1.0, v) for e, v in enumerate(curve)]})
        _finish(trial.model_id, curve)
    sweep_advance(sweep.pk)
    # The third trial validates far below the others at epoch 1: the median rule stops it.
    Job.objects.filter(pk=trials[2].model_id).update(status=JobStatus.RUNNING)
    sweep_on_validation(trials[2].model_id, {"val_accuracy": [(1.0, 0.1)]})
    pruned = Trial.objects.get(pk=trials[2].pk)
    assert pruned.state == TrialState.PRUNED and "Pruned by sweep 'tpe' (median rule) at epoch 1" in pruned.note
    job = Job.objects.get(pk=trials[2].model_id)
    assert job.status == JobStatus.ABORTED and job.events.last().message.startswith("Pruned by sweep")
    # A trial above the median goes on.
    fourth = sweep.trials.get(number=3)
    Job.objects.filter(pk=fourth.model_id).update(status=JobStatus.RUNNING)
    sweep_on_validation(fourth.model_id, {"val_accuracy": [(1.0, 0.9)]})
    assert Trial.objects.get(pk=fourth.pk).state == TrialState.RUNNING
    # Only the owner aborts; abort stops every unfinished trial.
    assert token_client(teammate).post(f"/api/sweeps/{sweep.pk}/abort/").status_code == 403
    data = token_client(owner).post(f"/api/sweeps/{sweep.pk}/abort/").json()
    assert data["status"] == "aborted" and data["counts"]["running"] == 0
    assert Job.objects.get(pk=fourth.model_id).status == JobStatus.ABORTED


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_grid_sweep_from_the_model_form(celery_worker_process, owner, shapes_folder):
    api = token_client(owner)
    dataset_id = built_dataset(api, shapes_folder)
    client = Client()
    client.force_login(owner)
    form = {"name": "grid", "dataset": dataset_id, "network": "lenet", "solver": "sgd", "epochs": 1, "batch_size": 16,
            "batch_accumulation": 1, "learning_rate": 0.01, "momentum": 0.9, "weight_decay": 0.0001, "seed": 1,
            "precision": "fp32", "lr_policy": "fixed", "lr_step_size": 33, "lr_gamma": 0.1, "lr_power": 1,
            "lr_warmup_epochs": 0, "val_interval": 1, "snapshot_interval": 1, "mean_subtraction": "image", "flip": "none",
            "rotation": 0, "scale_jitter": 0, "hsv_jitter": 0, "placement": "next",
            "sweep_space": "learning_rate = 0.05, 0.000001\nbatch_size = 16, 32", "sweep_mode": "grid",
            "sweep_max_trials": 10, "sweep_max_concurrent": 2, "sweep_metric": "val_accuracy", "sweep_pruner": "none"}
    bad = client.post("/models/new/", {**form, "sweep_space": "learning_rate = 0.1 .. 1"})
    assert "a grid takes lists" in bad.content.decode()
    response = client.post("/models/new/", form)
    assert response.status_code == 302 and "/sweeps/" in response["Location"], response.content.decode()[-2000:]
    sweep_id = int(response["Location"].rstrip("/").rsplit("/", 1)[1])
    import time

    deadline = time.monotonic() + 240
    while (data := api.get(f"/api/sweeps/{sweep_id}/").json())["status"] == "running":
        assert time.monotonic() < deadline, data
        time.sleep(1)
    assert data["status"] == "done" and data["counts"]["complete"] == 4, data
    assert data["best"]["params"]["learning_rate"] == 0.05  # a learning rate of 1e-6 learns nothing in one epoch
    models = [TrainedModel.objects.get(pk=t["model"]) for t in data["trials"]]
    assert sorted((m.learning_rate, m.batch_size) for m in models) == [(1e-06, 16), (1e-06, 32), (0.05, 16), (0.05, 32)]
    assert {m.epochs for m in models} == {1} and {m.job.group for m in models} == {"sweep: grid"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_optuna_sweep_from_the_cli(celery_worker_process, live_url, owner, shapes_folder, tmp_path):
    api = token_client(owner)
    dataset_id = built_dataset(api, shapes_folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update(DIGITS_URL=live_url, DIGITS_TOKEN=api._credentials["HTTP_AUTHORIZATION"].split()[1], DIGITS_CONFIG=str(tmp_path / "c"))
    out = subprocess.run(
        [sys.executable, "-m", "digits_cli", "sweeps", "create", "tpe", "--dataset", str(dataset_id), "--mode", "optuna",
         "--param", "learning_rate = 1e-4 .. 1e-1 log", "--param", "momentum = 0.5, 0.9", "--max-trials", "6",
         "--max-concurrent", "2", "--pruner", "median", "--seed", "3", "-o", "epochs=2", "-o", "batch_size=32",
         "--wait", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads(out.stdout)
    assert data["status"] == "done" and len(data["trials"]) == 6
    assert {t["state"] for t in data["trials"]} <= {"complete", "pruned"} and data["counts"]["complete"] >= 2
    assert all(1e-4 <= t["params"]["learning_rate"] <= 1e-1 for t in data["trials"])
    best = data["best"]
    assert best["value"] == max(t["value"] for t in data["trials"] if t["state"] == "complete")
    for trial in data["trials"]:
        if trial["state"] == "pruned":
            assert wait_for_status(api, f"/api/models/{trial['model']}/", {"aborted"})["job"]["status"] == "aborted"
    shown = subprocess.run([sys.executable, "-m", "digits_cli", "sweeps", "show", str(data["id"])], cwd=ROOT, env={**env, "COLUMNS": "200"},
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "★" in shown.stdout
