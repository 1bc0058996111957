"""The `digits` CLI against the live test server (daphne on the test database, the real
workers): login, a dataset from an uploaded archive, a model followed to the end, classify,
evaluate, export and download; errors give a message and a non-zero exit status."""
from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.imagegen import shape_image

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def digits(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "digits_cli", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def as_json(result: subprocess.CompletedProcess) -> object:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_cli_from_login_to_download(celery_worker_process, live_url, owner, admin_user, shapes_folder, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update(DIGITS_CONFIG=str(tmp_path / "digits.json"), DIGITS_URL=live_url, COLUMNS="200")

    bad = digits(env, "login", "--username", "owner", "--password", "wrong")
    assert bad.returncode == 1 and "login failed" in bad.stderr
    nobody = digits(env, "models", "list")
    assert nobody.returncode == 1 and "Not logged in" in nobody.stderr
    logged = as_json(digits(env, "login", "--username", "owner", "--password", "pw-owner", "--json"))
    assert logged["url"] == live_url
    assert stat.S_IMODE((tmp_path / "digits.json").stat().st_mode) == 0o600  # it holds a token

    # A dataset from a local archive: uploaded in chunks, then built; --wait exits 0.
    archive = tmp_path / "shapes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(shapes_folder.rglob("*.png")):
            zf.write(path, f"shapes/{path.relative_to(shapes_folder)}")
    dataset = as_json(digits(env, "datasets", "create", "cli-shapes", "--archive", str(archive), "--width", "28", "--height", "28",
                             "--val-percent", "20", "--wait", "--json"))
    assert dataset["job"]["status"] == "done" and dataset["counts"] == {"train": 240, "val": 60}
    refused = digits(env, "datasets", "create", "nothing", "--folder", "/no/such/folder")
    assert refused.returncode == 1 and "does not exist on the server" in refused.stderr
    listed = digits(env, "datasets", "list")
    assert listed.returncode == 0 and "cli-shapes" in listed.stdout

    # A model, followed to the end: JSON lines of metrics, then the outcome.
    followed = digits(env, "models", "create", "cli-lenet", "--dataset", str(dataset["id"]), "--network", "lenet",
                      "--epochs", "2", "--batch-size", "16", "-o", "lr_policy=\"cosine\"", "-o", "seed=7", "--follow", "--json")
    assert followed.returncode == 0, followed.stderr
    lines = [json.loads(line) for line in followed.stdout.splitlines()]
    metrics = [line for line in lines if "metric" in line]
    assert {"train_loss", "val_accuracy", "val_loss"} <= {m["metric"] for m in metrics}
    assert lines[-1]["status"] == "done"
    model_id = lines[-1]["id"]
    shown = as_json(digits(env, "models", "show", str(model_id), "--json"))
    assert shown["lr_policy"] == "cosine" and shown["seed"] == 7 and [s["epoch"] for s in shown["snapshots"]] == [1, 2]
    assert str(model_id) in digits(env, "models", "list", "--search", "cli-lenet").stdout
    wrong = digits(env, "models", "create", "bad", "--dataset", str(dataset["id"]), "--lr", "-1")
    assert wrong.returncode == 1 and "learning_rate" in wrong.stderr
    log = digits(env, "models", "logs", str(model_id))
    assert log.returncode == 0 and log.stdout.strip()

    # Classify, evaluate, export, download.
    image = tmp_path / "square.png"
    shape_image("square", random.Random(5)).save(image)
    classified = as_json(digits(env, "models", "classify", str(model_id), str(image), "--json"))
    assert len(classified["predictions"]) == 3
    evaluation = as_json(digits(env, "models", "evaluate", str(model_id), "--split", "val", "--wait", "--json"))
    assert evaluation["metrics"]["images"] == 60 and evaluation["job"]["status"] == "done"
    table = digits(env, "models", "evaluate", str(model_id), "--split", "val", "--wait")
    assert table.returncode == 0 and "60 images" in table.stdout
    export = as_json(digits(env, "models", "export", str(model_id), "--json"))
    assert {c["format"]: c["status"] for c in export["checks"]}["onnx"] == "passed"
    saved = as_json(digits(env, "models", "download", str(model_id), "--format", "onnx", "-o", str(tmp_path), "--json"))
    assert Path(saved["path"]).suffix == ".onnx" and Path(saved["path"]).stat().st_size == saved["bytes"] > 0
    missing = digits(env, "models", "download", str(model_id), "--format", "onnx", "--epoch", "1", "-o", str(tmp_path))
    assert missing.returncode == 1 and "Export it first" in missing.stderr

    # The queue: anyone reads it; only admins drain a device.
    devices = as_json(digits(env, "queue", "devices", "--json"))
    assert devices and all("state" in d for d in devices)
    drained = digits(env, "queue", "drain", str(devices[0]["id"]))
    assert drained.returncode == 1 and "Only admins" in drained.stderr
    from rest_framework.authtoken.models import Token

    admin_env = {**env, "DIGITS_TOKEN": Token.objects.get_or_create(user=admin_user)[0].key}
    assert as_json(digits(admin_env, "queue", "drain", str(devices[0]["id"]), "--json"))["enabled"] is False
    assert as_json(digits(admin_env, "queue", "drain", str(devices[0]["id"]), "--undo", "--json"))["enabled"] is True
    assert digits(env, "models", "delete", str(model_id)).returncode == 0
    assert digits(env, "models", "show", str(model_id)).returncode == 1


def test_the_client_module_is_importable_without_the_server():
    """The CLI and its client import nothing of the server: a user installs them anywhere."""
    code = "import sys; import digits_cli.main; bad = [m for m in sys.modules if m.split('.')[0] in " \
           "('django', 'torch', 'workers', 'models_app', 'datasets')]; assert not bad, bad"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_readme_example_script(celery_worker_process, live_url, owner, shapes_folder, tmp_path):
    """examples/train_and_evaluate.py, as the README shows it, against the live server."""
    from rest_framework.authtoken.models import Token

    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update(DIGITS_URL=live_url, DIGITS_TOKEN=Token.objects.get_or_create(user=owner)[0].key, DIGITS_CONFIG=str(tmp_path / "c"))
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "train_and_evaluate.py"), str(shapes_folder)],
                         cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "dataset #" in out.stdout and "best validation accuracy" in out.stdout and "on 60 images" in out.stdout
    assert out.stdout.count("recall") == 3


def test_a_segmentation_dataset_from_the_cli(celery_worker_process, live_url, owner, data_root, tmp_path):
    from datasets.synthetic import write_shapes

    folder = data_root / "cli-seg"
    write_shapes(folder, 12, 32, seed=9)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITS_")}
    env.update(DIGITS_CONFIG=str(tmp_path / "digits.json"), DIGITS_URL=live_url, COLUMNS="200")
    as_json(digits(env, "login", "--username", "owner", "--password", "pw-owner", "--json"))
    dataset = as_json(digits(env, "datasets", "create", "cli-seg", "--folder", str(folder / "images"),
                             "--label-folder", str(folder / "masks"), "--class-list", str(folder / "classes.txt"),
                             "--width", "32", "--height", "32", "--val-percent", "25", "--wait", "--json"))
    assert dataset["job"]["status"] == "done" and dataset["task"] == "segmentation"
    assert dataset["counts"] == {"train": 9, "val": 3} and len(dataset["class_counts"]["train"]) == 4
    refused = digits(env, "datasets", "create", "no-classes", "--folder", str(folder / "images"), "--label-folder", str(folder / "masks"))
    assert refused.returncode == 1 and "Give the class list" in refused.stderr
