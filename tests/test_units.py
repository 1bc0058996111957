"""Pure functions: resizing, splitting, the network contract, display helpers."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.splits import split_stratified
from datasets.imaging import load_image, resize_image, to_input
from frontend.templatetags.digits import duration
from models_app.networks import network_module


def wide_image() -> Image.Image:
    """100x50: left half black, right half white."""
    arr = np.zeros((50, 100, 3), dtype=np.uint8)
    arr[:, 50:] = 255
    return Image.fromarray(arr)


@pytest.mark.parametrize("mode", ["squash", "crop", "fill", "half_crop"])
def test_every_resize_mode_gives_the_requested_size(mode):  # noqa: ANN001
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


def test_to_input_is_channels_first_and_mean_subtracted():
    arr = np.full((2, 3, 3), 100, dtype=np.uint8)
    x = to_input(arr, np.full((2, 3, 3), 50, dtype=np.float32))
    assert x.shape == (3, 2, 3) and np.allclose(x, 50 / 255)


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
