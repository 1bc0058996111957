"""Exports: a snapshot exported to ONNX and torch.export by the real workers, each checked
against PyTorch before it is offered; the files re-checked here independently; the archive
with model.onnx whose classify.py runs without torch; the Triton layout; a network whose
export does not match PyTorch fails its check and offers nothing."""
from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from django.test import Client

from models_app.export_verify import compare, short_error
from tests.conftest import token_client, wait_for_status
from tests.imagegen import shape_image
from tests.test_model_api import built_dataset, grant_code_permission, train


def test_compare_holds_outputs_to_their_scale():
    reference = np.array([[1.0, 2.0, 3.0], [300.0, 10.0, -5.0]])
    diff, allowed, agreement = compare(reference, reference + 1e-3, 1e-4)
    assert diff == pytest.approx(1e-3) and allowed == pytest.approx(0.03) and agreement == 1.0
    swapped = reference.copy()
    swapped[0] = [1.0, 3.0, 2.0]
    _, _, agreement = compare(reference, swapped, 1e-4)
    assert agreement == 0.5
    with pytest.raises(ValueError, match="shape"):
        compare(reference, reference[:1], 1e-4)


def test_short_error_keeps_the_first_lines():
    message = short_error(RuntimeError("first\n\n" + "\n".join(f"graph line {i}" for i in range(100))))
    assert message.startswith("RuntimeError: first") and message.endswith("…") and message.count("\n") == 5


def _untar(response, into: Path) -> Path:
    assert response.status_code == 200, getattr(response, "content", b"")[:500]
    data = b"".join(response.streaming_content)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
    return next(into.iterdir())


def _run_script(folder: Path, images: list[str], *args: str, block_torch: bool = False) -> list[dict]:
    """classify.py in a clean interpreter; with block_torch, `import torch` fails in it."""
    script = folder / "classify.py"
    if block_torch:
        code = (
            "import runpy, sys; sys.modules['torch'] = None; "
            f"sys.argv = [{str(script)!r}, *{[*images, *args]!r}]; runpy.run_path({str(script)!r}, run_name='__main__')"
        )
        command = [sys.executable, "-I", "-c", code]
    else:
        command = [sys.executable, "-I", str(script), *images, *args]
    out = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_export_verified_then_downloaded(celery_worker_process, api, owner, stranger, shapes_folder, tmp_path):
    import onnxruntime as ort
    import torch

    dataset_id = built_dataset(api, shapes_folder)
    model = train(api, dataset_id, epochs=2)
    assert model["job"]["status"] == "done", model["job"]
    model_id = model["id"]

    # Before any export: the archive (weights written by the inference worker, without
    # model.onnx), and a clear 409 for the checked formats.
    plain = _untar(api.get(f"/api/models/{model_id}/download/"), tmp_path / "plain")
    assert not (plain / "model.onnx").exists() and (plain / "model.pt").exists()
    refused = api.get(f"/api/models/{model_id}/download/onnx/")
    assert refused.status_code == 409 and "Export it first" in refused.json()["detail"]
    assert api.get(f"/api/models/{model_id}/download/zip/").status_code == 404
    assert api.post(f"/api/models/{model_id}/exports/", {"epoch": 7}, format="json").status_code == 400

    response = api.post(f"/api/models/{model_id}/exports/", {"epoch": 1}, format="json")
    assert response.status_code == 201, response.content
    export_id = response.json()["id"]
    export = wait_for_status(api, f"/api/exports/{export_id}/", {"done", "error"})
    assert export["job"]["status"] == "done", export["job"]
    checks = {c["format"]: c for c in export["checks"]}
    assert set(checks) == {"pytorch", "onnx", "pt2"}
    assert export["images"] == 60  # the whole validation split (fewer than 64 images)
    for fmt in ("onnx", "pt2"):
        check = checks[fmt]
        assert check["status"] == "passed", check
        assert check["max_abs_diff"] <= check["tolerance"] and check["top1_agreement"] == 1.0
        assert 0 < check["p50_ms"] <= check["p95_ms"] and check["bytes"] > 0 and check["error"] == ""
    assert checks["pytorch"]["status"] == "reference" and checks["pytorch"]["p50_ms"] > 0

    # The ONNX file checked again here, independently, with a batch size it was not
    # exported with, against the snapshot's own weights.
    onnx = api.get(f"/api/models/{model_id}/download/onnx/?epoch=1")
    assert onnx.status_code == 200 and onnx["Content-Disposition"].endswith('.onnx"')
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"".join(onnx.streaming_content))
    from models_app.networks import network_module

    from models_app.models import TrainedModel

    trained = TrainedModel.objects.get(pk=model_id)
    state = torch.load(trained.snapshots.get(epoch=1).path, map_location="cpu", weights_only=True)
    net = network_module("lenet").build(tuple(state["input_shape"]), state["num_classes"]).eval()
    net.load_state_dict(state["model"])
    x = torch.rand(5, *state["input_shape"])
    with torch.no_grad():
        expected = net(x).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"input": x.numpy()})[0]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))

    pt2 = api.get(f"/api/models/{model_id}/download/pt2/?epoch=1")
    assert pt2.status_code == 200
    (tmp_path / "m.pt2").write_bytes(b"".join(pt2.streaming_content))
    with torch.no_grad():
        exported = torch.export.load(str(tmp_path / "m.pt2")).module()(x)
    assert torch.allclose(exported, torch.from_numpy(expected), atol=1e-5)
    # Epoch 2 has no export: its checked formats are refused, its archive has no ONNX.
    assert api.get(f"/api/models/{model_id}/download/onnx/?epoch=2").status_code == 409

    # The archive of the exported snapshot carries model.onnx; its classify.py gives the
    # same answers with torch and with onnxruntime alone (torch made unimportable).
    folder = _untar(api.get(f"/api/models/{model_id}/download/archive/?epoch=1"), tmp_path / "archive")
    assert (folder / "model.onnx").read_bytes() == onnx_path.read_bytes()
    info = json.loads((folder / "info.json").read_text())
    assert info["exports"]["onnx"]["status"] == "passed" and info["onnx"]["input"] == "input"
    rng = random.Random(7)
    images = []
    for kind in ("circle", "square", "triangle"):
        path = tmp_path / f"{kind}.png"
        shape_image(kind, rng).save(path)
        images.append(str(path))
    with_torch = _run_script(folder, images, "--json")
    without_torch = _run_script(folder, images, "--json", block_torch=True)
    assert [r["runtime"] for r in with_torch] == ["torch"] * 3 and [r["runtime"] for r in without_torch] == ["onnx"] * 3
    for a, b in zip(with_torch, without_torch):
        assert a["predictions"][0]["label"] == b["predictions"][0]["label"]
        assert a["predictions"][0]["probability"] == pytest.approx(b["predictions"][0]["probability"], abs=1e-4)

    # The Triton layout: config.pbtxt beside 1/model.onnx, dimensions of this network.
    triton = _untar(api.get(f"/api/models/{model_id}/download/triton/?epoch=1"), tmp_path / "triton")
    config = (triton / "config.pbtxt").read_text()
    assert (triton / "1" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    assert 'platform: "onnxruntime_onnx"' in config and "dims: [ 3, 28, 28 ]" in config and "dims: [ 3 ]" in config
    assert (triton / "labels.txt").read_text().split() == ["circle", "square", "triangle"]

    # The model page shows the table with its download links.
    browser = Client()
    browser.force_login(owner)
    page = browser.get(f"/models/{model_id}/").content.decode()
    assert "check-passed" in page and f"/api/models/{model_id}/download/onnx/?epoch=1" in page
    # Others see it; only the owner deletes it, and its files go with it.
    other = token_client(stranger)
    assert other.get(f"/api/exports/{export_id}/").status_code == 200
    assert other.delete(f"/api/exports/{export_id}/").status_code == 403
    assert api.delete(f"/api/exports/{export_id}/").status_code == 204
    assert api.get(f"/api/models/{model_id}/download/onnx/?epoch=1").status_code == 409


# A network whose output depends on how often it has been called: eager PyTorch and the
# exports (traced once) disagree, which the check must catch.
DRIFTING = '''import torch
from torch import nn

calls = [0]


class Net(nn.Module):
    def __init__(self, features, n):
        super().__init__()
        self.fc = nn.Linear(features, n)

    def forward(self, x):
        calls[0] += 1
        return self.fc(x.flatten(1)) + calls[0]


def build(input_shape, num_classes):
    channels, height, width = input_shape
    return Net(channels * height * width, num_classes)
'''


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_export_that_differs_from_pytorch_fails_its_check(celery_worker_process, owner, shapes_folder, tmp_path):
    grant_code_permission(owner)
    api = token_client(owner)
    dataset_id = built_dataset(api, shapes_folder)
    model = train(api, dataset_id, epochs=1, network="custom", custom_code=DRIFTING)
    assert model["job"]["status"] == "done", model["job"]
    export_id = api.post(f"/api/models/{model['id']}/exports/", {}, format="json").json()["id"]
    export = wait_for_status(api, f"/api/exports/{export_id}/", {"done", "error"})
    assert export["job"]["status"] == "done", export["job"]
    checks = {c["format"]: c for c in export["checks"]}
    for fmt in ("onnx", "pt2"):
        assert checks[fmt]["status"] == "failed", checks[fmt]
        assert "outputs differ from PyTorch" in checks[fmt]["error"]
    assert "ONNX failed; torch.export (.pt2) failed" in export["job"]["timeline"][-1]["message"]
    refused = api.get(f"/api/models/{model['id']}/download/onnx/")
    assert refused.status_code == 409 and "did not pass its check" in refused.json()["detail"]
    # Nothing unchecked is left beside the export, and the archive goes without ONNX.
    from models_app.models import Export

    directory = Export.objects.get(pk=export_id).directory
    assert sorted(p.name for p in directory.iterdir() if p.suffix in (".onnx", ".pt2", ".tmp")) == []
    folder = _untar(api.get(f"/api/models/{model['id']}/download/"), tmp_path / "archive")
    assert not (folder / "model.onnx").exists()
    assert json.loads((folder / "info.json").read_text())["exports"]["onnx"]["status"] == "failed"
