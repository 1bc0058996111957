"""Classify one image in the inference worker, with every layer's pictures and statistics
and Grad-CAM (the page and the API), on the real stack; the web process without torch."""
from __future__ import annotations

import base64
import io
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client
from PIL import Image

from tests.test_model_api import built_dataset, png_bytes, train

pytestmark = [pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parent.parent


def picture(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_the_web_process_never_imports_torch():
    """Every URL's view and API module, the websocket routing and the services load
    without torch: classification is the inference worker's."""
    code = (
        "import sys, django; django.setup();"
        "import digits_site.urls, digits_site.asgi, models_app.services, models_app.views, models_app.api;"
        "from django.urls import get_resolver; get_resolver().resolve('/');"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'captum', 'onnx', 'onnxruntime', 'onnxscript'));"
        "assert not loaded, loaded[:5]"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "digits_site.settings_test"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.e2e
def test_classify_one_with_layer_views_and_grad_cam(celery_worker_process, api, owner, shapes_folder):
    dataset_id = built_dataset(api, shapes_folder)
    model = train(api, dataset_id, epochs=1)
    assert model["job"]["status"] == "done", model["job"]
    url = f"/api/models/{model['id']}/classify/"

    plain = api.post(url, {"image": png_bytes()}, format="multipart")
    assert plain.status_code == 200, plain.content
    assert "layers" not in plain.json()
    predictions = plain.json()["predictions"]
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True) and 0.99 < sum(probabilities) <= 1.0001
    assert {p["label"] for p in predictions} == {"circle", "square", "triangle"}

    response = api.post(url, {"image": png_bytes(), "views": "true"}, format="multipart")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["predictions"] == predictions  # the same snapshot, the same answer
    assert picture(data["input"]["resized"]).size == (28, 28)
    assert picture(data["input"]["network"]).size == (28, 28)
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert [layer["type"] for layer in data["layers"]] == [
        "Conv2d", "MaxPool2d", "Conv2d", "MaxPool2d", "Flatten", "Linear", "ReLU", "Linear",
    ]
    assert sum(layer["params"] for layer in data["layers"]) == data["total_params"]
    conv1 = layers["features.0"]
    assert conv1["output_shape"] == [1, 20, 24, 24]
    # The histograms count every weight (the bias is not a weight) and every activation.
    assert sum(conv1["weights"]["histogram"]["counts"]) == conv1["params"] - 20
    assert sum(conv1["activations"]["histogram"]["counts"]) == math.prod(conv1["output_shape"])
    assert len(conv1["weights"]["histogram"]["edges"]) == 21
    assert conv1["weights"]["min"] <= conv1["weights"]["mean"] <= conv1["weights"]["max"]
    tiles = picture(conv1["weight_tiles"])
    assert tiles.width >= 5 * 32  # 20 filters of 5x5, scaled up, in a 5x4 grid
    assert picture(conv1["activation_tiles"]).width > 0
    # The first fully connected layer's activations are taken before the in-place ReLU.
    assert layers["classifier.1"]["activations"]["min"] < 0 <= layers["classifier.2"]["activations"]["min"]
    assert layers["classifier.3"]["output_shape"] == [1, 3]
    cam = data["gradcam"]
    assert cam["layer"] == "features.2" and picture(cam["overlay"]).size == (28, 28)

    # A snapshot that does not exist, and a file that is not an image: 400s that say why.
    response = api.post(url, {"image": png_bytes(), "epoch": "7"}, format="multipart")
    assert response.status_code == 400 and "no snapshot for epoch 7" in response.json()["detail"]
    assert response.json()["errors"] == {"epoch": [response.json()["detail"]]}

    # The page: the pictures, the bars and the layers; a bad file shows the form again.
    client = Client()
    client.force_login(owner)
    page = client.post(f"/models/{model['id']}/classify/", {"image": png_bytes(), "views": "on"})
    html = page.content.decode()
    assert page.status_code == 200 and 'id="layers"' in html and 'id="gradcam"' in html and "features.0" in html
    bad = io.BytesIO(b"not an image")
    bad.name = "x.png"
    page = client.post(f"/models/{model['id']}/classify/", {"image": bad})
    html = page.content.decode()
    assert page.status_code == 200 and 'id="classify-form"' in html and 'id="classify-result"' not in html
    assert "Upload a valid image" in html
