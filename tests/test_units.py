"""Pure functions: resizing, splitting, the network contract, display helpers."""
from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.splits import split_stratified
from datasets.imaging import load_image, resize_image
from frontend.templatetags.digits import duration
from models_app.networks import network_module


def wide_image() -> Image.Image:
    """100x50: left half black, right half white."""
    arr = np.zeros((50, 100, 3), dtype=np.uint8)
    arr[:, 50:] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("mode", ["squash", "crop", "fill", "half_crop"])
def test_every_resize_mode_gives_the_requested_size(mode):
    assert resize_image(wide_image(), 40, 30, mode).size == (40, 30)


def test_crop_keeps_the_centre_and_squash_keeps_everything():
    crop = np.asarray(resize_image(wide_image(), 20, 20, "crop"))
    squash = np.asarray(resize_image(wide_image(), 20, 20, "squash"))
    # crop: 40x20 scaled, centre 20 columns = 10 black + 10 white
    assert crop[:, :9].max() == 0 and crop[:, 11:].min() == 255
    assert squash[:, :9].max() == 0 and squash[:, 11:].min() == 255


def test_fill_pads_top_and_bottom_with_noise():
    out = np.asarray(resize_image(wide_image(), 20, 20, "fill"))
    # the 20x10 image sits in rows 5..14; rows above are noise, not black/white only
    assert out[5:15, :9].max() == 0
    assert len(np.unique(out[:4])) > 10


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="unknown resize mode"):
        resize_image(wide_image(), 10, 10, "stretchy")


def test_rgba_is_composited_on_white_and_grayscale_has_one_channel():
    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buf, format="PNG")
    buf.seek(0)
    img = load_image(buf, channels=1)
    assert img.mode == "L" and np.asarray(img).min() == 255


def test_split_is_stratified_with_at_least_one_validation_image():
    items = [(f"a{i}", 0) for i in range(10)] + [(f"b{i}", 1) for i in range(3)]
    split = split_stratified(items, 20, 0, seed=1)
    val_labels = sorted(label for _, label in split["val"])
    assert val_labels == [0, 0, 1]
    assert len(split["train"]) == 10 and split["test"] == []
    assert split == split_stratified(items, 20, 0, seed=1)


def test_lenet_contract():
    net = network_module("lenet").build((1, 28, 28), 7)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    with pytest.raises(ValueError, match="at least 16x16"):
        network_module("lenet").build((3, 8, 8), 2)


def test_duration_filter():
    assert duration(None) == "—"
    assert duration(5) == "5s"
    assert duration(185) == "3m 05s"
    assert duration(3720) == "1h 02m"


def test_exported_classify_script_with_a_crop_prints_the_asked_top_n(tmp_path):
    """The standalone classify.py of a model trained with a crop size: `--top 3` gives three
    predictions (the crop offset, 2, once overwrote it); LeNet's archive asks for no
    torchvision, a torchvision network's does."""
    import json
    import shutil
    import subprocess
    import sys

    import datasets.imaging
    from models_app.export import SCRIPT, requirements
    from models_app.networks import network_source


    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(SCRIPT, folder / "classify.py")
    shutil.copy(datasets.imaging.__file__, folder / "imaging.py")
    (folder / "network.py").write_text(network_source("lenet"))
    net = network_module("lenet").build((3, 24, 24), 3)
    torch.save(net.state_dict(), folder / "model.pt")
    (folder / "labels.txt").write_text("a\nb\nc\n")
    np.save(folder / "mean.npy", np.zeros((28, 28, 3), dtype=np.float32))
    info = {"input_shape": [3, 24, 24], "num_classes": 3, "image_width": 28, "image_height": 28, "crop_size": 24,
            "resize_mode": "squash", "mean_subtraction": "image"}
    (folder / "info.json").write_text(json.dumps(info))
    wide_image().save(tmp_path / "x.png")
    out = subprocess.run([sys.executable, "-I", str(folder / "classify.py"), str(tmp_path / "x.png"), "--top", "3", "--json"],
                         cwd=folder, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["predictions"]) == 3  # not the crop offset, 2
    assert requirements(network_source("lenet")) == ["torch", "numpy", "pillow"]
    assert "torchvision" in requirements(network_source("resnet18"))



def test_any_64_bit_seed_is_accepted_by_the_training_helpers():
    """DIGITS' own tests seed with 0xCAFEBABE; a seed up to 2^63 - 1 must drive the epoch
    order and the transforms without overflowing a 32-bit or 64-bit generator."""
    from models_app.training.data import epoch_order

    for seed in (0xCAFEBABE, 2**63 - 1):
        order = epoch_order(10, seed, epoch=3)
        assert sorted(order.tolist()) == list(range(10))
        assert torch.equal(order, epoch_order(10, seed, epoch=3))
        np.random.seed(seed % 2**32)


@pytest.mark.parametrize("name", ["lenet", "alexnet", "googlenet", "resnet18", "resnet50", "mobilenet_v3", "efficientnet_b0", "vit_b_16"])
def test_the_forms_input_rule_matches_what_build_accepts(name):
    """The web process checks a network's input from constants in its source (no torch);
    build() must accept exactly the same shapes."""
    from models_app.networks import check_input, network_constants

    assert "INTENDED_INPUT" in network_constants(name)
    for shape in [(3, 15, 15), (1, 16, 16), (3, 28, 28), (3, 31, 40), (3, 32, 32), (3, 62, 62), (3, 63, 63), (1, 48, 48), (3, 64, 80)]:
        try:
            check_input(name, name, shape)
            form_ok = True
        except ValueError:
            form_ok = False
        try:
            with torch.device("meta"):
                network_module(name).build(shape, 3)
            build_ok = True
        except ValueError:
            build_ok = False
        assert form_ok == build_ok, (name, shape)


def test_a_kinds_unexpected_failure_at_the_end_fails_its_job_instead_of_escaping():
    """A bug in a kind's `complete` (e.g. a missing key in its results) becomes the job's
    error message; a JobError stays as it was; the database being away is raised for the
    caller to wait on it."""
    from django.db import OperationalError

    from workers import kinds
    from workers.errors import JobError
    from workers.models import Job

    class Broken(kinds.Kind):
        name = "broken"

        def __init__(self, error: Exception) -> None:
            self.error = error

        def complete(self, job):
            raise self.error

    job = Job(pk=7, kind="broken", name="x")
    with pytest.raises(JobError, match=r"recording its results failed \(KeyError: 'top1'\)"):
        kinds.complete(Broken(KeyError("top1")), job)
    with pytest.raises(JobError, match="^no metrics$"):
        kinds.complete(Broken(JobError("no metrics")), job)
    with pytest.raises(OperationalError):
        kinds.complete(Broken(OperationalError("gone")), job)
    assert kinds.complete(kinds.Kind(), job) == ""


def test_per_image_scores_of_masks_and_boxes():
    from models_app.metrics import detection_score, image_iou, match_detections, segmentation_summary

    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 255]])
    predicted = np.array([[0, 1, 1, 1], [0, 0, 1, 0]])
    # (the ignored pixel left out) background: 3 of its 4 pixels found -> 3/4; class 1: its 3 pixels and one more -> 3/4
    miou, accuracy = image_iou(truth, predicted)
    assert miou == pytest.approx(0.75) and accuracy == pytest.approx(6 / 7)
    assert image_iou(np.full((2, 2), 255), predicted[:2, :2]) == (1.0, 1.0)
    summary = segmentation_summary(np.array([[5, 1, 0], [0, 2, 0], [0, 0, 0]]))
    assert summary["iou"] == [pytest.approx(5 / 6), pytest.approx(2 / 3), None] and summary["pixels"] == [6, 2, 0]
    assert summary["miou"] == pytest.approx((5 / 6 + 2 / 3) / 2) and summary["pixel_accuracy"] == pytest.approx(7 / 8)

    truth_boxes, truth_labels = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), np.array([0, 1])
    boxes = np.array([[1, 1, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float)
    labels = np.array([0, 0, 0, 1])
    scores = np.array([0.9, 0.8, 0.95, 0.3])
    # The surest box of class 0 takes the object; the second is a false alarm; the class-0 box
    # on the class-1 object matches nothing; the unsure one is not counted.
    assert match_detections(boxes, labels, scores, truth_boxes, truth_labels) == (1, 2, 1)
    assert match_detections(boxes[:1], labels[:1], scores[:1], truth_boxes[:1], truth_labels[:1]) == (1, 0, 0)
    assert detection_score(1, 2, 1) == pytest.approx(2 / 5) and detection_score(0, 0, 0) == 1.0


@pytest.mark.parametrize("rotation", [0, 30])
def test_boxes_move_with_their_image_under_every_training_transform(rotation):
    """Detection's training transform: a filled box drawn in the image, and the box given
    with it, come out together through zoom, crop, flips, quarter turns (and rotation):
    the box returned is the drawn one's bounding box, or it is dropped when most of it
    left the image. How far the drawn pixels may reach past the box: bilinear sampling
    gives a value to input positions less than a pixel from a filled pixel's centre on
    each axis (the filled square grown by half a pixel), which the zoom (up to 1.3) and a
    turn (cos + sin of its angle) stretch, and a pixel counts from its centre: half a pixel
    more. Inside: without rotation the sides stay on pixel edges, half a pixel; a rotated
    box ends in wedges, whose last pixel rows may hold no pixel centre: a pixel and a half."""
    from models_app.training.augment import KEEP_VISIBLE, BatchTransform, TransformSpec

    images = torch.zeros(32, 3, 64, 64, dtype=torch.uint8)
    images[:, :, 20:44, 10:30] = 255  # rows 20..43, columns 10..29
    box = torch.tensor([[10.0, 20.0, 30.0, 44.0]])
    spec = TransformSpec(crop_size=48, mean_subtraction="none", flip="hv", rotate90=True, rotation=rotation, scale_jitter=0.3)
    transform = BatchTransform(spec, None, torch.device("cpu"), seed=5)
    x, targets = transform.train_boxes(images, [(box, torch.tensor([2]))] * 32)
    assert x.shape == (32, 3, 48, 48)
    angle = math.radians(rotation)
    outside = 0.5 * 1.3 * (math.cos(angle) + math.sin(angle)) + 0.5
    inside = 1.5 if rotation else 0.5
    kept = 0
    for image, target in zip(x, targets):
        drawn = (image[0] > 0).nonzero()
        if not len(target["boxes"]):
            # Dropped: what is left of the box in the image is small.
            assert len(drawn) < KEEP_VISIBLE * 20 * 24 * 1.35**2
            continue
        kept += 1
        assert target["labels"].tolist() == [2]
        top, left = drawn.min(dim=0).values.tolist()
        bottom, right = (drawn.max(dim=0).values + 1).tolist()
        got = target["boxes"][0].tolist()
        assert all(got[i] - outside <= v <= got[i] + inside for i, v in enumerate((left, top))), (got, left, top)
        assert all(got[i] - inside <= v <= got[i] + outside for i, v in zip((2, 3), (right, bottom))), (got, right, bottom)
    assert kept >= 20  # most of the draws keep the box
