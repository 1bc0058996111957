"""Browser smoke test: Debian's Chromium, driven by Playwright, against the real ASGI
server (daphne) with websockets."""
from __future__ import annotations

import os
import shutil

import pytest

from models_app.models import Metric
from tests.factories import make_dataset, make_model

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def browser():
    """One browser for a module's tests (starting Playwright and Chromium costs a second
    or two a test); each test has a context of its own (`page`)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("The browser tests need Debian's chromium: apt-get install chromium (.ci/run does this).")

    # Playwright's sync API runs an event loop in this thread while it is started; the ORM
    # calls made by the tests and by pytest-django's teardown are still synchronous and safe.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                      "--disable-sync"],
            )
            yield browser
            browser.close()


@pytest.fixture
def page(browser):
    # A context per test: cookies and storage of its own, as in a browser just started.
    context = browser.new_context()
    yield context.new_page()
    context.close()


def test_login_console_and_model_page(live_url, page, owner, tmp_path):
    dataset = make_dataset(owner, name="browser-data")
    model = make_model(owner, dataset, name="browser-model", status="running")

    page.goto(live_url + "/")
    assert "/accounts/login/" in page.url
    page.fill("input[name=username]", "owner")
    page.fill("input[name=password]", "pw-owner")
    page.click("button[type=submit]")
    page.wait_for_url(live_url + "/")
    assert page.locator("#active-jobs").inner_text().count("browser-model") == 1
    assert "browser-data" in page.locator("#finished-jobs").inner_text()

    page.click("text=browser-model")
    page.wait_for_url(f"{live_url}/models/{model.pk}/")
    assert page.locator("h1").first.inner_text().startswith("browser-model")
    # The charts are drawn, and the live websocket connects through daphne.
    assert page.locator("#loss-chart").bounding_box()["height"] > 100
    page.wait_for_function("document.body.dataset.live === 'connected'", timeout=10_000)
    assert page.locator("#snapshots tbody tr").count() == 2
    page.screenshot(path=str(tmp_path / "model.png"), full_page=True)
    if os.environ.get("DIGITS_SCREENSHOTS"):
        shutil.copy(tmp_path / "model.png", os.environ["DIGITS_SCREENSHOTS"])


def _keep(page, name: str) -> None:
    """Save a full-page screenshot when DIGITS_SCREENSHOT_DIR is set (for reviewing the UI)."""
    folder = os.environ.get("DIGITS_SCREENSHOT_DIR")
    if folder:
        page.screenshot(path=os.path.join(folder, name + ".png"), full_page=True)


def _login(page, live_url: str, name: str = "owner") -> None:
    page.goto(live_url + "/accounts/login/")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", "pw-" + name)
    page.click("button[type=submit]")
    page.wait_for_url(live_url + "/")


def test_dataset_from_an_uploaded_archive_with_preview_and_gallery(celery_worker_process, live_url, page, owner, tmp_path):
    import zipfile

    from tests.imagegen import shape_image

    archive = tmp_path / "shapes.zip"
    rng = __import__("random").Random(0)
    with zipfile.ZipFile(archive, "w") as zf:
        for kind in ("circle", "square"):
            for i in range(6):
                path = tmp_path / f"{kind}{i}.png"
                shape_image(kind, rng, 48).resize((64, 32)).save(path)
                zf.write(path, f"shapes/{kind}/{i}.png")

    _login(page, live_url)
    page.goto(live_url + "/datasets/new/")
    page.fill("input[name=name]", "uploaded-shapes")
    page.check("input[name=source][value=upload]")
    assert page.locator(".source-group[data-source=folder]").is_hidden()
    page.set_input_files("#archive-file", str(archive))
    page.wait_for_function("document.getElementById('upload-text').textContent.includes('Uploaded')", timeout=20_000)
    # The live preview shows the first image in every resize mode, at the chosen size.
    page.fill("input[name=image_width]", "24")
    page.fill("input[name=image_height]", "24")
    page.wait_for_function("document.querySelectorAll('img.preview').length === 4 && "
                           "[...document.querySelectorAll('img.preview')].every(i => i.naturalWidth === 24)", timeout=10_000)
    assert "shapes/circle/0.png (64×32)" in page.locator("#preview-status").inner_text()
    page.check("input[name=resize_mode][value=fill]")
    _keep(page, "dataset-new")
    page.fill("input[name=val_percent]", "34")
    page.click("#create")
    page.wait_for_url(f"{live_url}/datasets/*/")
    page.wait_for_function("document.getElementById('job-status').textContent.trim() === 'Done'", timeout=60_000)
    page.reload()
    assert page.locator("#split-counts [data-split=train]").inner_text() == "8"
    assert page.locator("canvas.class-chart").count() == 2
    _keep(page, "dataset-detail")

    page.click("#explore")
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 24)")
    assert page.locator("#gallery figure").count() == 8
    page.select_option("select[name=label]", label="square")
    page.click("#gallery-filter button")
    page.wait_for_function("document.querySelectorAll('#gallery figure').length === 4")
    assert set(page.locator("#gallery figcaption").all_inner_texts()) <= {f"#{i} · square" for i in range(8)}
    _keep(page, "dataset-explore")


def test_model_form_lr_preview_visualize_and_customize(live_url, page, owner):
    from django.contrib.auth.models import Permission

    dataset = make_dataset(owner, name="form-data")
    _login(page, live_url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_url}/models/new/?dataset={dataset.pk}")
    # Without the permission there is no custom-code choice.
    assert page.locator("input[name=network_mode][value=custom]").count() == 0
    assert page.locator("#customize").is_hidden()
    # The preview follows the policy; only that policy's fields are shown.
    page.wait_for_load_state("networkidle")
    assert not errors, errors
    page.wait_for_function("document.getElementById('lr-preview').dataset.points === '200'")
    assert page.locator("#field-lr_gamma").is_hidden()
    page.select_option("select[name=lr_policy]", "step")
    page.fill("input[name=lr_step_size]", "50")
    assert page.locator("#field-lr_gamma").is_visible() and page.locator("#field-lr_power").is_hidden()
    page.wait_for_function(
        "(() => { const d = Chart.getChart('lr-preview').data.datasets[0].data;"
        " return d.length === 200 && Math.abs(d[99].y - 0.01) < 1e-12 && Math.abs(d[100].y - 0.001) < 1e-12; })()"
    )
    page.click("#visualize")
    page.wait_for_selector("#layer-table tbody tr", timeout=60_000)
    assert "Conv2d" in page.locator("#layer-table").inner_text()
    _keep(page, "model-new")

    owner.user_permissions.add(Permission.objects.get(codename="submit_custom_network"))
    page.reload()
    page.click("#customize")
    page.wait_for_function("document.querySelector('textarea[name=custom_code]').value.includes('def build')")
    assert page.locator("input[name=network_mode][value=custom]").is_checked()
    code = page.locator("textarea[name=custom_code]")
    code.fill(code.input_value().replace("nn.MaxPool2d(2, 2),\n            nn.Conv2d", "nn.MaxPool2d(2, 2)\n            nn.Conv2d", 1))
    page.click("#visualize")
    page.wait_for_selector("#visualize-error", timeout=60_000)
    assert page.locator("#visualize-error").inner_text().startswith("Line ")


def test_base_model_picker_searches_the_api(live_url, page, owner, teammate):
    """Fine-tuning picks its base model from a search fed by the paginated API, not from a
    dropdown of every model; picking one fills the id and loads its snapshots' epochs."""
    dataset = make_dataset(owner, name="pick-data")
    for i in range(30):
        make_model(owner if i % 2 else teammate, dataset, name=f"sweep-{i:02d}")
    target = make_model(owner, dataset, name="the-best-run", epochs=3)
    _login(page, live_url)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{live_url}/models/new/?dataset={dataset.pk}")
    assert page.locator("select[name=base_model]").count() == 0  # no 31-option dropdown
    page.check("input[name=network_mode][value=previous]")
    page.fill("#base-model-search", "best")
    page.wait_for_function("document.querySelectorAll('#base-model-results option').length === 1")
    page.select_option("#base-model-results", str(target.pk))
    assert page.input_value("input[name=base_model]") == str(target.pk)
    assert "the-best-run" in page.inner_text("#base-model-chosen")
    page.wait_for_function("document.querySelectorAll('#base-epoch-select option').length === 4")  # latest + 3
    page.fill("#base-model-search", "sweep")
    page.wait_for_function("document.querySelectorAll('#base-model-results option').length === 21")  # 20 + "more"
    assert "10 more" in page.inner_text("#base-model-results")
    _keep(page, "model-form-picker")
    assert not errors, errors
    # A page refused to this user says why, in the site's layout, with a way back.
    page.goto(f"{live_url}/cluster/")
    assert page.inner_text("#error-message") == "Only admins can use the cluster console."
    assert page.locator("a", has_text="Console").count() >= 1
    _keep(page, "error-page")


# Holds back each websocket's "open" handler until the test calls __release(): the page
# behaves as if its subscription were slow, so the test decides what happens before it.
HOLD_OPEN = """
(() => {
  const Native = window.WebSocket;
  const held = [];
  window.WebSocket = function (url, protocols) {
    const ws = new Native(url, protocols);
    let onopen = null;
    Object.defineProperty(ws, "onopen", { set(fn) { onopen = fn; }, get() { return onopen; } });
    ws.addEventListener("open", (event) => held.push(() => onopen && onopen(event)));
    return ws;
  };
  window.__heldOpens = () => held.length;
  window.__release = () => held.splice(0).forEach((run) => run());
})();
"""


def test_the_live_page_catches_up_with_points_stored_before_it_subscribed(live_url, page, owner):
    """A fast job can store points between the page's render and its websocket
    subscription, when nothing is pushed to this page yet: once subscribed, the page
    fetches what it missed, each point once and in order."""
    model = make_model(owner, make_dataset(owner, name="gap-data"), name="gap", status="running")
    _login(page, live_url)
    page.add_init_script(HOLD_OPEN)
    page.goto(f"{live_url}/models/{model.pk}/")
    page.wait_for_function("window.__heldOpens() === 1")
    page.wait_for_function("document.body.dataset.chartsReady === '1'")  # the first load of the series
    assert page.evaluate("Chart.getChart('loss-chart').data.datasets[0].data.length") == 10
    for i in range(11, 16):  # stored meanwhile, and never published
        Metric.objects.create(model=model, name="train_loss", iteration=i, epoch=i / 5, value=1.0 / i)
    page.evaluate("window.__release()")  # subscribed now
    page.wait_for_function("Chart.getChart('loss-chart').data.datasets[0].data.length === 15")
    epochs = page.evaluate("Chart.getChart('loss-chart').data.datasets[0].data.map(p => p.x)")
    assert epochs == sorted(epochs) and len(set(epochs)) == 15


def test_a_status_change_before_the_subscription_reloads_the_page(live_url, page, owner):
    from workers.models import Job

    model = make_model(owner, make_dataset(owner, name="gap-data2"), name="gap2", status="running")
    _login(page, live_url)
    page.add_init_script(HOLD_OPEN)
    page.goto(f"{live_url}/models/{model.pk}/")
    page.wait_for_function("window.__heldOpens() === 1")
    assert page.locator("#job-status").inner_text().strip() == "Running"
    Job.objects.filter(pk=model.pk).update(status="done")  # finished, and nothing was pushed
    with page.expect_navigation():
        page.evaluate("window.__release()")
    page.wait_for_function("document.getElementById('job-status').textContent.trim() === 'Done'")


def test_train_from_the_form_and_watch_it_live(celery_worker_process, live_url, page, owner, shapes_folder):
    from tests.conftest import token_client, wait_for_status

    api = token_client(owner)
    response = api.post("/api/datasets/", {"name": "live-shapes", "folder": str(shapes_folder), "val_percent": 20}, format="json")
    dataset_id = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done"})["id"]

    _login(page, live_url)
    page.goto(f"{live_url}/models/new/?dataset={dataset_id}")
    page.fill("input[name=name]", "live-lenet")
    page.fill("input[name=epochs]", "30")
    page.fill("input[name=batch_size]", "16")
    page.fill("input[name=snapshot_interval]", "10")
    page.select_option("select[name=lr_policy]", "cosine")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_url}/models/*/")
    # Points arrive over the websocket while it trains: no reload.
    page.wait_for_function("Chart.getChart('loss-chart').data.datasets[0].data.length > 20", timeout=60_000)
    page.wait_for_function("document.getElementById('next-snapshot').textContent.includes('Next snapshot')", timeout=30_000)
    page.wait_for_function(
        "['Done', 'Error', 'Aborted'].includes(document.getElementById('job-status').textContent.trim())", timeout=120_000
    )
    model_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    job = token_client(owner).get(f"/api/models/{model_id}/").json()["job"]
    assert job["status"] == "done", job
    page.reload()
    page.wait_for_function("document.body.dataset.chartsReady === '1'")  # the series load after the page
    assert page.locator("#snapshots tbody tr").count() == 3
    assert "images/s" in page.locator("#timings").inner_text()
    points = page.evaluate("Chart.getChart('lr-chart').data.datasets[0].data.length")
    assert points == 30 * 15  # every iteration: 240 images / batch 16
    _keep(page, "model-detail")


def test_an_evaluation_page_confusion_cell_opens_its_images(live_url, page, owner):
    """The confusion matrix's cells are links to their images; the per-class links open
    the mistakes and the top images; the reliability diagram is drawn."""
    import numpy as np

    from models_app.evaluate import PREDICTIONS
    from models_app.metrics import summarise
    from models_app.models import Evaluation
    from workers.models import Job, JobEvent

    dataset = make_dataset(owner, name="eval-data")
    dataset.labels, dataset.counts = ["circle", "square", "triangle"], {"train": 30, "val": 12}
    dataset.save()
    model = make_model(owner, dataset, name="eval-model")
    job = Job.objects.create(kind="evaluation", name="eval-model · val", owner=owner, status="done")
    JobEvent.objects.create(job=job, status="done")
    job.directory.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(3), 4)
    predicted = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 1, 1])  # one circle and two triangles taken for squares
    probabilities = np.full((12, 3), 0.1, dtype=np.float32)
    probabilities[np.arange(12), predicted] = 0.8
    np.savez(job.directory / PREDICTIONS, probabilities=probabilities.astype(np.float16), labels=labels)
    evaluation = Evaluation.objects.create(job=job, model=model, epoch=2, split="val", metrics=summarise(probabilities, labels))

    _login(page, live_url)
    page.goto(f"{live_url}/evaluations/{evaluation.pk}/")
    assert page.locator("#top1").inner_text() == "66.67%"
    assert page.locator("#reliability-chart").bounding_box()["height"] > 100
    page.click('a[data-cell="2-1"]')
    page.wait_for_url(f"**/evaluations/{evaluation.pk}/?view=cell&label=2&predicted=1#images")
    assert page.locator("#images h2").inner_text().startswith("Given triangle, predicted square")
    assert page.locator("#gallery figure").count() == 2
    assert page.locator("#gallery figure.wrong").count() == 2
    page.click("#per-class tbody tr:nth-child(1) >> text=mistakes")  # circle: one taken for a square
    assert page.locator("#gallery figure").count() == 1
    assert "given circle" in page.locator("#gallery figcaption").inner_text()
    _keep(page, "evaluation")


def test_one_prediction_layer_by_layer(celery_worker_process, live_url, page, owner, shapes_folder, tmp_path):
    """Classify one with "visualizations and statistics": the image as the network sees
    it, each layer's tiles and histograms, and Grad-CAM; a bad file re-shows the form."""
    from tests.conftest import token_client
    from tests.imagegen import shape_image
    from tests.test_model_api import built_dataset, train

    import random

    api = token_client(owner)
    model = train(api, built_dataset(api, shapes_folder), epochs=1)
    assert model["job"]["status"] == "done", model["job"]
    image = tmp_path / "square.png"
    shape_image("square", random.Random(3)).save(image)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a picture")

    _login(page, live_url)
    page.goto(f"{live_url}/models/{model['id']}/")
    page.set_input_files("#classify input[name=image]", str(broken))
    page.click("#classify button[type=submit]")
    page.wait_for_selector("#classify-form .error")
    assert page.locator("#classify-form input[name=image]").count() == 1  # the form again, not a dead end

    page.set_input_files("#classify-form input[name=image]", str(image))
    page.check("#classify-form input[name=views]")
    page.click("#classify-form button[type=submit]")
    page.wait_for_selector("#layers")
    assert page.locator("#predictions tbody tr").count() == 3
    loaded = "el => el.complete && el.naturalWidth > 0"
    assert page.locator("#network-input").evaluate(loaded) and page.locator("#gradcam").evaluate(loaded)
    layers = page.locator("#layers tr.layer")
    assert layers.count() >= 6
    first_conv = page.locator('#layers tr.layer[data-layer="features.0"]')
    assert first_conv.locator("img.tiles.weights").evaluate(loaded) and first_conv.locator("img.tiles.activations").evaluate(loaded)
    assert first_conv.locator(".histogram").first.locator("span").count() == 20
    assert "mean" in first_conv.inner_text() and "std" in first_conv.inner_text()
    _keep(page, "classify-layers")


def test_the_mistakes_browser_and_the_export_table(live_url, page, owner):
    """Mistakes, most confident first, with each image's file in the source; the export
    table's rows (passed with a download, failed with its error)."""
    import numpy as np

    from datasets.source_paths import path_lines, write_lines
    from models_app.evaluate import PREDICTIONS
    from models_app.metrics import summarise
    from models_app.models import Evaluation, Export
    from workers.models import Job, JobEvent

    dataset = make_dataset(owner, name="eval-data")
    dataset.labels, dataset.counts = ["circle", "square", "triangle"], {"train": 30, "val": 6}
    dataset.save()
    write_lines(dataset.directory, "val", path_lines([f"{kind}/{i}.png" for kind in ("circle", "square", "triangle") for i in range(2)]))
    model = make_model(owner, dataset, name="eval-model")
    job = Job.objects.create(kind="evaluation", name="eval-model · val", owner=owner, status="done")
    JobEvent.objects.create(job=job, status="done")
    job.directory.mkdir(parents=True, exist_ok=True)
    labels = np.repeat(np.arange(3), 2)
    probabilities = np.array([
        [0.9, 0.05, 0.05], [0.3, 0.6, 0.1],  # circle 1 taken for a square at 60 %
        [0.1, 0.8, 0.1], [0.05, 0.05, 0.9],  # square 1 taken for a triangle at 90 %
        [0.2, 0.7, 0.1], [0.1, 0.1, 0.8],  # triangle 0 taken for a square at 70 %
    ], dtype=np.float32)
    np.savez(job.directory / PREDICTIONS, probabilities=probabilities.astype(np.float16), labels=labels)
    evaluation = Evaluation.objects.create(job=job, model=model, epoch=2, split="val", metrics=summarise(probabilities, labels))

    export_job = Job.objects.create(kind="export", name="eval-model · export", owner=owner, status="done")
    JobEvent.objects.create(job=export_job, status="done")
    export_job.directory.mkdir(parents=True, exist_ok=True)
    (export_job.directory / "model.onnx").write_bytes(b"onnx bytes")
    row = {"file": "", "bytes": 0, "export_seconds": 1.5, "max_abs_diff": None, "tolerance": None, "top1_agreement": None,
           "p50_ms": None, "p95_ms": None, "error": "", "details": {}}
    Export.objects.create(job=export_job, model=model, epoch=2, results={"images": 6, "threads": 1, "torch": "2.x", "formats": {
        "pytorch": {**row, "format": "pytorch", "status": "reference", "p50_ms": 1.0, "p95_ms": 1.2, "export_seconds": None},
        "onnx": {**row, "format": "onnx", "status": "passed", "file": "model.onnx", "bytes": 10, "max_abs_diff": 2e-7,
                 "tolerance": 1e-4, "top1_agreement": 1.0, "p50_ms": 0.4, "p95_ms": 0.5},
        "pt2": {**row, "format": "pt2", "status": "failed", "error": "Unsupported: data-dependent control flow"},
    }})

    _login(page, live_url)
    page.goto(f"{live_url}/evaluations/{evaluation.pk}/")
    captions = page.locator("#gallery figure.wrong figcaption").all_inner_texts()
    assert len(captions) == 3
    assert [c.split("\n")[0].split(" · ")[0] for c in captions] == ["#3", "#4", "#1"]  # 90 %, 70 %, 60 %
    assert "square/1.png" in captions[0] and "predicted triangle (90.0%)" in captions[0]
    assert page.locator("#suspects").count() == 1

    page.goto(f"{live_url}/models/{model.pk}/")
    table = page.locator("#exports .export-table")
    assert table.locator("tr.format-onnx.check-passed").count() == 1
    assert "2.00e-07" in table.locator("tr.format-onnx").inner_text()
    assert table.locator("tr.format-pt2.check-failed").count() == 1
    assert "data-dependent control flow" in page.locator("#exports .export-error").inner_text()
    with page.expect_download() as download:
        table.locator("tr.format-onnx a", has_text="Download .onnx").click()
    assert open(download.value.path(), "rb").read() == b"onnx bytes"
    assert download.value.suggested_filename.endswith(".onnx")

    # Classify many: the form shows the chosen source's fields only.
    assert page.locator("#field-split").is_visible() and not page.locator("#field-image_folder").is_visible()
    page.check("#evaluate-form input[name=source][value=list]")
    assert page.locator("#field-image_folder").is_visible() and not page.locator("#field-split").is_visible()
    _keep(page, "model-exports")


def test_tick_two_models_and_compare_their_curves(live_url, page, owner):
    """The models list sorts by best validation accuracy; ticking two rows enables
    "Compare", whose page overlays both runs' curves and highlights differing parameters."""
    from models_app.models import TrainedModel
    from models_app.services import model_refresh_best

    dataset = make_dataset(owner, name="cmp-data")
    first = make_model(owner, dataset, name="short run", epochs=2)
    second = make_model(owner, dataset, name="long run", epochs=4)
    TrainedModel.objects.filter(pk=second.pk).update(learning_rate=0.1)
    for model in (first, second):
        model_refresh_best(model.pk)

    _login(page, live_url)
    page.goto(f"{live_url}/models/")
    page.click("a.sort[data-sort=best]")
    page.click("a.sort[data-sort=best]")  # again: best first
    page.wait_for_url("**ordering=-best*")
    rows = page.locator("#model-table tbody tr")
    assert rows.nth(0).locator("td").nth(1).inner_text().startswith("long run")
    assert page.locator("#compare-selected").is_disabled()
    rows.nth(0).locator("input[name=ids]").check()
    rows.nth(1).locator("input[name=ids]").check()
    assert page.locator("#selected-count").inner_text() == "2 selected"
    page.click("#compare-selected")
    page.wait_for_url("**/models/compare/?ids=*")
    page.wait_for_function("document.body.dataset.chartsReady === '1'")
    assert page.evaluate("Chart.getChart('compare-accuracy').data.datasets.map(d => d.data.length)") == [4, 2]
    assert page.evaluate("Chart.getChart('compare-loss').data.datasets.length") == 2
    page.check("#log-scale")
    assert page.evaluate("Chart.getChart('compare-chart').options.scales.y.type") == "logarithmic"
    assert page.locator('#params tr.differs[data-field="learning_rate"]').count() == 1
    assert page.locator('#params tr[data-field="dataset"]').get_attribute("class") == ""
    _keep(page, "compare")


def test_a_sweep_page_draws_its_trials(live_url, page, owner):
    """Parallel coordinates: one line per trial, the best one marked; trials best first."""
    from models_app.models import Sweep, Trial

    dataset = make_dataset(owner, name="sweep-data")
    sweep = Sweep.objects.create(
        owner=owner, name="lr sweep", dataset=dataset, mode="optuna", status="done", metric="val_accuracy",
        space={"learning_rate": {"low": 1e-4, "high": 1e-1, "log": True, "int": False}, "solver": {"values": ["sgd", "adam"]}},
        max_trials=4, max_concurrent=2,
    )
    for number, (lr, solver, state, value) in enumerate(
        [(0.01, "sgd", "complete", 0.8), (0.001, "adam", "complete", 0.93), (0.0002, "sgd", "pruned", 0.4), (0.05, "adam", "failed", None)]
    ):
        Trial.objects.create(sweep=sweep, number=number, params={"learning_rate": lr, "solver": solver}, state=state, value=value)

    _login(page, live_url)
    page.goto(f"{live_url}/sweeps/{sweep.pk}/")
    page.wait_for_function("document.body.dataset.parallelReady === '1'")
    assert page.locator("#parallel polyline").count() == 4
    assert page.locator("#parallel polyline.best").get_attribute("data-trial") == "1"
    assert page.locator("#trials tbody tr").first.get_attribute("data-trial") == "1"
    assert "★" in page.locator("#trials tbody tr.best").inner_text()
    assert "Best: trial #1" in page.locator("#best").inner_text()
    _keep(page, "sweep")


def test_the_model_page_marks_the_best_epoch_and_stays_true(live_url, page, owner):
    """Best epoch starred on the chart and in the snapshots; the x-axis spans the planned
    epochs; no top-5 with 3 classes; a loss log scale; a running job's time ticks; a
    diverged run keeps its curve and says why."""
    from django.utils import timezone

    from models_app.models import TrainedModel
    from models_app.services import model_refresh_best
    from workers.models import Job

    dataset = make_dataset(owner, name="three")
    dataset.labels = ["a", "b", "c"]
    dataset.save()
    model = make_model(owner, dataset, name="marked", epochs=4)  # val accuracy 0.6 .. 0.9, snapshots at 1..4
    TrainedModel.objects.filter(pk=model.pk).update(epochs=10)
    for i in range(1, 6):  # the device readings the trainer sends (models_app/training/telemetry.py)
        for name, value in (("cpu_percent:r0", 90.0 + i), ("rss_mb:r0", 300.0 + i)):
            Metric.objects.create(model=model, name=name, iteration=i * 2, epoch=i * 0.4, value=value)
    model_refresh_best(model.pk)
    Job.objects.filter(pk=model.pk).update(status="running", started_at=timezone.now() - timezone.timedelta(seconds=75))

    _login(page, live_url)
    page.goto(f"{live_url}/models/{model.pk}/")
    page.wait_for_function("document.body.dataset.chartsReady === '1'")
    assert page.evaluate("Chart.getChart('accuracy-chart').data.datasets.map(d => d.label)") == ["val accuracy (top-1, %)", "best"]
    assert page.evaluate("Chart.getChart('accuracy-chart').data.datasets[1].data") == [{"x": 4, "y": 90}]
    assert page.evaluate("Chart.getChart('loss-chart').options.scales.x.max") == 10
    assert page.evaluate("Chart.getChart('device-chart').data.datasets.map(d => [d.label, d.data.length])") == [["CPU use %", 5]]
    assert page.evaluate("Chart.getChart('device-memory-chart').data.datasets.map(d => [d.label, d.data.length])") == [["resident memory", 5]]
    assert "Val. top-5" not in page.locator("#snapshots thead").inner_text()
    assert float(page.locator("#snapshots tr.best").get_attribute("data-epoch")) == 4
    assert "Classify" in page.locator("#snapshots tr.best").inner_text()
    page.check("#loss-log")
    assert page.evaluate("Chart.getChart('loss-chart').options.scales.y.type") == "logarithmic"
    first = page.locator("#job-runtime").inner_text()
    page.wait_for_function(f"document.getElementById('job-runtime').textContent !== {first!r}")
    assert page.locator("#job-runtime").inner_text().startswith("1m")

    diverged = make_model(owner, dataset, name="diverged", epochs=2, status="error")
    Job.objects.filter(pk=diverged.pk).update(
        error="Loss became NaN at epoch 2.40 (iteration 12, learning rate 10): training diverged. Try decreasing the learning rate.")
    page.goto(f"{live_url}/models/{diverged.pk}/")
    page.wait_for_function("document.body.dataset.chartsReady === '1'")
    assert "learning rate 10" in page.locator("#job-error").inner_text()
    assert page.evaluate("Chart.getChart('loss-chart').data.datasets[0].data.length") == 10  # its curve up to the failure
    _keep(page, "model-best-epoch")


def test_the_queue_explains_itself_and_a_model_sets_its_limit_preemption_and_visibility(
    fake_devices, live_url, page, owner, admin_user
):
    """From the model form: a time limit, preemptible, private. The job page says all
    three, its place in the queue and when it should start (the running job's ETA); the
    console shows the same estimate. No worker serves the device: it stays queued."""
    from django.utils import timezone

    from tests.test_scheduler import device, queue, running
    from workers.models import Job

    dataset = make_dataset(owner, name="queue-data")
    past = make_model(owner, dataset, name="past", epochs=2)
    now = timezone.now()
    Job.objects.filter(pk=past.pk).update(started_at=now - timezone.timedelta(seconds=400), finished_at=now - timezone.timedelta(seconds=100))
    device("b", 0)
    first = queue(owner, dataset, "first")
    assert running(first)
    Job.objects.filter(pk=first.pk).update(eta_seconds=600)

    _login(page, live_url)
    page.goto(f"{live_url}/models/new/?dataset={dataset.pk}")
    page.fill("input[name=name]", "waiting")
    page.fill("input[name=epochs]", "2")
    page.fill("input[name=time_limit_hours]", "0.5")
    page.check("input[name=preemptible]")
    page.select_option("select[name=visibility]", "private")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_url}/models/*/")
    waiting = Job.objects.get(name="waiting")
    assert (waiting.visibility, waiting.preemptible, waiting.time_limit_seconds) == ("private", True, 1800.0)
    assert page.locator("#queue-position").inner_text() == "#1 in the queue"
    assert page.locator("#queue-start").inner_text().startswith("expected to start in ~")  # about 10 minutes
    assert page.locator("#job-visibility").inner_text() == "private"
    header = page.locator("#queue-reason").inner_text()
    assert "preemptible" in header and "stops after 30m 00s" in header
    _keep(page, "model-queued")

    page.context.clear_cookies()  # log in as an admin
    _login(page, live_url, "boss")
    page.goto(f"{live_url}/cluster/")
    row = page.locator(f"#queue tr[data-job='{waiting.pk}']")
    assert row.locator(".expected-start").inner_text().startswith("in ~") and "preemptible" in row.inner_text()
    assert "Limits and fair share" in page.content()
    _keep(page, "cluster-queue")
    page.click("#audit-link")
    page.wait_for_url(f"{live_url}/cluster/audit/")
    assert page.locator("#audit").count() == 1 and page.locator("#nav-cluster").is_visible()  # the menu is there
    _keep(page, "audit")


def test_a_killed_web_process_leaves_training_alone_and_the_page_catches_up(
    celery_worker_process, web_server, page, owner, shapes_folder
):
    """kill -9 of the web server while a model trains: the job goes on (it lives in the
    workers), and once the web server is back the open page reconnects by itself and shows
    the points stored meanwhile, with nothing missing."""
    import signal

    from tests.conftest import token_client, wait_for_status
    from tests.test_distributed import submit, wait_until

    live_url = web_server.url
    api = token_client(owner)
    response = api.post("/api/datasets/", {"name": "web-down", "folder": str(shapes_folder), "val_percent": 20}, format="json")
    dataset_id = wait_for_status(api, f"/api/datasets/{response.json()['id']}/", {"done"})["id"]
    model_id = submit(api, dataset_id, name="through-a-restart", epochs=150, snapshot_interval=50, val_interval=50)
    _login(page, live_url)
    page.goto(f"{live_url}/models/{model_id}/")
    page.wait_for_function("document.body.dataset.live === 'connected'", timeout=60_000)
    page.wait_for_function("Chart.getChart('loss-chart').data.datasets[0].data.length > 10", timeout=60_000)
    web_server.stop(signal.SIGKILL)
    page.wait_for_function("document.body.dataset.live === 'disconnected'", timeout=30_000)
    before = Metric.objects.filter(model_id=model_id, name="train_loss").count()
    wait_until(lambda: Metric.objects.filter(model_id=model_id, name="train_loss").count() > before + 30, 60,
               "training to go on without the web server")
    web_server.start()
    page.wait_for_function("document.body.dataset.live === 'connected'", timeout=60_000)  # reconnected, and reloaded
    page.wait_for_function("document.body.dataset.chartsReady === '1'", timeout=60_000)
    shown = page.evaluate("Chart.getChart('loss-chart').data.datasets[0].data.length")
    assert shown > before + 30
    done = wait_for_status(api, f"/api/models/{model_id}/", {"done", "error"}, timeout=300)
    assert done["job"]["status"] == "done", done["job"]
    iterations = sorted(Metric.objects.filter(model_id=model_id, name="train_loss").values_list("iteration", flat=True))
    assert iterations == list(range(1, 150 * 15 + 1))


def test_a_page_whose_session_ended_says_so_instead_of_going_quiet(web_server, page, owner):
    """Logged out everywhere (the sessions deleted) while a job page is open, and the web
    server restarted: the page cannot reconnect, and says why, with a way back."""
    from django.contrib.sessions.models import Session

    dataset = make_dataset(owner, name="session-data")
    model = make_model(owner, dataset, name="followed")
    _login(page, web_server.url)
    page.goto(f"{web_server.url}/models/{model.pk}/")
    page.wait_for_function("document.body.dataset.live === 'connected'")
    Session.objects.all().delete()
    web_server.stop()
    web_server.start()
    page.wait_for_selector("#logged-out", timeout=60_000)
    assert "You are logged out" in page.locator("#logged-out").inner_text()
    assert page.locator("#logged-out a").get_attribute("href") == f"/accounts/login/?next=%2Fmodels%2F{model.pk}%2F"


def test_a_segmentation_dataset_page_and_its_gallery_of_labels(live_url, page, owner, tmp_path):
    from datasets.synthetic import write_shapes
    from tests.factories import make_segmentation_dataset

    write_shapes(tmp_path / "shapes", 24, 48, seed=4)
    dataset = make_segmentation_dataset(owner, tmp_path / "shapes", size=(48, 48))
    _login(page, live_url)
    page.goto(f"{live_url}/datasets/{dataset.pk}/")
    assert page.locator("h2", has_text="Pixels per class").count() == 1
    assert page.locator(".class-chart").count() == 2  # a chart per split
    page.wait_for_function("Chart.getChart(document.querySelector('.class-chart')) !== undefined")
    _keep(page, "segmentation-dataset")
    page.click("#explore")
    page.wait_for_selector("#gallery img")
    # Every image of the page arrives, with its labels over it.
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 48)")
    assert "show=overlay" in page.locator("#gallery img").first.get_attribute("src")
    assert page.locator("#legend .swatch").count() == 4
    _keep(page, "segmentation-gallery")
    page.select_option("select[name=show]", "labels")
    page.click("#gallery-filter button[type=submit]")
    page.wait_for_url("**show=labels**")
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 48)")
    assert "show=labels" in page.locator("#gallery img").first.get_attribute("src")


def test_a_detection_dataset_page_and_its_gallery_of_boxes(live_url, page, owner, tmp_path):
    from datasets.synthetic import write_shapes
    from tests.factories import make_detection_dataset

    write_shapes(tmp_path / "shapes", 24, 48, seed=6)
    dataset = make_detection_dataset(owner, tmp_path / "shapes")
    _login(page, live_url)
    page.goto(f"{live_url}/datasets/{dataset.pk}/")
    assert page.locator("h2", has_text="Objects per class").count() == 1
    page.wait_for_function("Chart.getChart(document.querySelector('.class-chart')) !== undefined")
    title = page.evaluate("Chart.getChart(document.querySelector('.class-chart')).options.plugins.title.text")
    assert title.endswith(" objects)")
    page.click("#explore")
    page.wait_for_selector("#gallery img")
    # Each image drawn with its boxes, enlarged so that the class names can be read.
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 240)")
    assert "show=boxes" in page.locator("#gallery img").first.get_attribute("src")
    _keep(page, "detection-gallery")
    page.select_option("select[name=show]", "image")
    page.click("#gallery-filter button[type=submit]")
    page.wait_for_url("**show=image**")
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === 48)")


def test_the_model_form_offers_the_networks_of_the_datasets_task(live_url, page, owner):
    from datasets.models import Dataset

    classification = make_dataset(owner, name="classes")
    segmentation = make_dataset(owner, name="pixels")
    Dataset.objects.filter(pk=segmentation.pk).update(task="segmentation", image_width=64, image_height=64)
    _login(page, live_url)
    page.goto(f"{live_url}/models/new/?dataset={classification.pk}")
    visible = "[...document.querySelectorAll('#id_network optgroup')].filter(g => !g.hidden).map(g => g.label)"
    assert page.evaluate(visible) == ["Classification"]
    page.select_option("#id_dataset", str(segmentation.pk))
    assert page.evaluate(visible) == ["Segmentation"]
    assert page.input_value("#id_network") == "unet_small"  # a classification network was chosen: replaced
    page.select_option("#id_dataset", str(classification.pk))
    assert page.evaluate(visible) == ["Classification"] and page.input_value("#id_network") == "lenet"


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_a_segmentation_or_detection_evaluation_shows_its_worst_images_first(live_url, page, owner, tmp_path, task):
    """The evaluation page of a segmentation or detection model: its figures, a per-class
    chart, and its images worst first, each drawn with the prediction beside the truth."""
    from datasets.synthetic import write_shapes
    from tests.factories import make_detection_dataset, make_segmentation_dataset, make_spatial_evaluation

    write_shapes(tmp_path / "shapes", 24, 48, seed=8)
    if task == "segmentation":
        dataset = make_segmentation_dataset(owner, tmp_path / "shapes", size=(48, 48))
        evaluation = make_spatial_evaluation(owner, dataset, "unet_small")
    else:
        dataset = make_detection_dataset(owner, tmp_path / "shapes")
        evaluation = make_spatial_evaluation(owner, dataset, "fcos_small")
    m = evaluation.metrics
    _login(page, live_url)
    page.goto(f"{live_url}/evaluations/{evaluation.pk}/")
    figure = "#miou" if task == "segmentation" else "#map50"
    assert page.locator(figure).inner_text().startswith(f"{100 * (m['miou'] if task == 'segmentation' else m['map50']):.2f}%")
    page.wait_for_function("Chart.getChart(document.getElementById('class-chart')) !== undefined")
    bars = page.evaluate("Chart.getChart(document.getElementById('class-chart')).data.datasets.length")
    assert bars == (1 if task == "segmentation" else 2)
    figures = page.locator("#gallery figure")
    assert figures.count() == m["images"]
    scores = [float(s) for s in page.eval_on_selector_all("#gallery figure", "fs => fs.map(f => f.dataset.score)")]
    assert scores == sorted(scores)  # the worst first
    # Every image arrives twice, prediction and ground truth, drawn at the same size.
    size = 48 if task == "segmentation" else 240
    page.wait_for_function(
        f"[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth === {size})"
    )
    assert page.locator("#gallery img.prediction").count() == page.locator("#gallery img.truth").count() == m["images"]
    assert page.locator("#legend .swatch").count() == (4 if task == "segmentation" else 0)
    _keep(page, f"{task}-evaluation")
    page.click("#images .pager a[href*='view=all']")
    page.wait_for_url("**view=all**")
    indices = page.eval_on_selector_all("#gallery figure", "fs => fs.map(f => Number(f.dataset.index))")
    assert indices == list(range(m["images"]))


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_classify_one_image_with_a_segmentation_or_detection_model(celery_worker_process, live_url, page, owner, tmp_path, task):
    """Classify one image on the model page, through the inference worker: the masks over
    the image with their legend and the classes' shares, or the boxes drawn with their
    table; a segmentation model also gets the installed mask-outline plugin's view."""
    from datasets.synthetic import write_shapes
    from tests.factories import make_detection_dataset, make_segmentation_dataset, make_spatial_evaluation

    write_shapes(tmp_path / "shapes", 16, 48, seed=9)
    if task == "segmentation":
        dataset = make_segmentation_dataset(owner, tmp_path / "shapes", size=(48, 48))
        model = make_spatial_evaluation(owner, dataset, "unet_small").model
    else:
        dataset = make_detection_dataset(owner, tmp_path / "shapes")
        model = make_spatial_evaluation(owner, dataset, "fcos_small").model
    _login(page, live_url)
    page.goto(f"{live_url}/models/{model.pk}/")
    # The model page offers to evaluate it on a split (no lists or uploads for this task).
    assert page.locator("#evaluate-form select[name=split]").count() == 1
    assert page.locator("#evaluate-form input[name=images]").count() == 0
    # Snapshots by the task's own measure.
    assert page.locator("#snapshots thead th").nth(1).inner_text() == ("Val. mean IoU" if task == "segmentation" else "Val. mAP@0.5")
    _keep(page, f"{task}-model-page")
    page.set_input_files("#classify input[name=image]", str(tmp_path / "shapes" / "images" / "00003.png"))
    page.click("#classify button[type=submit]")
    page.wait_for_selector("#classify-result")
    loaded = "el => el.complete && el.naturalWidth > 0"
    if task == "segmentation":
        assert page.locator("#segmentation-overlay").evaluate(loaded) and page.locator("#segmentation-labels").evaluate(loaded)
        assert page.locator("#legend .swatch").count() == 4
        shares = [float(t.split("%")[0]) for t in page.locator("#predictions tbody td:nth-child(3)").all_inner_texts()]
        assert shares and abs(sum(shares) - 100) < 0.1  # every pixel is one class's
        outline = page.locator('#plugin-views figure[data-plugin="mask-outline"] img')
        assert outline.evaluate(loaded) and outline.evaluate("el => el.naturalWidth") == 240
    else:
        assert page.locator("#detection-boxes").evaluate(loaded)
        assert page.locator("#detection-boxes").evaluate("el => el.naturalWidth") == 240
        rows = page.locator("#detections tbody tr")
        if rows.first.inner_text().startswith("Nothing found"):  # an untrained detector may find nothing
            assert rows.count() == 1
        else:
            assert all(label in ("circle", "rectangle", "triangle") for label in rows.locator("td.label").all_inner_texts())
        assert page.locator("#plugin-views").count() == 0  # the outline view is for segmentation only
    _keep(page, f"{task}-classify-one")


def test_an_s3_credential_is_added_on_its_page_and_chosen_on_the_dataset_form(live_url, page, owner):
    """The S3 credentials page keeps the secret to itself; the new-dataset form's S3 source
    offers one's credentials and says, on the field, why a bucket cannot be read."""
    _login(page, live_url)
    page.goto(f"{live_url}/s3/credentials/")
    page.fill("#id_name", "lab")
    page.fill("#id_endpoint_url", "http://127.0.0.1:9")  # nothing listens there
    page.fill("#id_access_key_id", "AKIAEXAMPLEKEY1")
    page.fill("#id_secret_access_key", "very-secret-value")
    page.click("#credential-form button[type=submit]")
    page.wait_for_selector("#credentials td:has-text('AKIAEXAMPLEKEY1')")
    assert "very-secret-value" not in page.content()
    assert page.locator("#id_secret_access_key").input_value() == ""
    _keep(page, "s3-credentials")
    page.goto(f"{live_url}/datasets/new/")
    page.check("input[name=source][value=s3]")
    assert page.locator('.source-group[data-source="s3"]').is_visible()
    assert page.locator('.source-group[data-source="folder"]').is_hidden()
    assert "lab" in page.locator("#id_s3_credential option").all_inner_texts()
    page.fill("#id_name", "from-s3")
    page.select_option("#id_s3_credential", "lab")
    page.fill("#id_s3_bucket", "images")
    page.fill("#id_s3_prefix", "shapes/train")
    page.click("#dataset-form button[type=submit]")
    page.wait_for_selector(".has-error")
    error = page.locator(".has-error").first.inner_text()
    assert "Cannot reach the S3 endpoint http://127.0.0.1:9" in error and "S3 credential" in error
    assert page.locator("#id_s3_bucket").input_value() == "images"  # the form is kept as filled in
    _keep(page, "dataset-form-s3")
