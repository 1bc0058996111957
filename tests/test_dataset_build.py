"""The dataset build on real files: sources, split rules, resize modes, encodings, input
formats and bad input. These call the build function directly (it is a pure function from
files to files); tests/test_dataset_api.py runs it through the worker."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.build import OUTPUTS, BuildError, build
from datasets.imaging import load_image, resize_image, to_array
from datasets.source_paths import read_paths
from datasets.lmdb_store import open_readonly, read_labels, read_meta, read_record
from datasets.splits import cap_per_class, drop_small_classes, split_stratified
from tests.imagegen import make_shapes_folder


def spec_for(tmp_path: Path, **extra) -> dict:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return {
        "source": "folder", "output_dir": str(out), "width": 16, "height": 16, "channels": 3,
        "val_percent": 0, "test_percent": 0, "seed": 0, "workers": 2, "data_roots": [str(tmp_path)], **extra,
    }


def stored(out: Path, split: str) -> tuple[list[np.ndarray], list[int]]:
    db = out / f"{split}_db"
    meta = read_meta(db)
    with open_readonly(db).begin() as txn:
        pairs = [read_record(txn, i, meta) for i in range(meta["count"])]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def counts_per_class(result: dict, split: str) -> list[int]:
    return result["class_counts"][split]


# --- split rules ---------------------------------------------------------------------


def test_percent_split_gives_exact_per_class_counts(tmp_path):
    folder = make_shapes_folder(tmp_path / "src", per_class=10)
    result = build(spec_for(tmp_path, folder=str(folder), val_percent=20, test_percent=10))
    assert result["counts"] == {"train": 21, "val": 6, "test": 3}
    assert counts_per_class(result, "train") == [7, 7, 7]
    assert counts_per_class(result, "val") == [2, 2, 2]
    assert counts_per_class(result, "test") == [1, 1, 1]
    # The stored label index matches the class counts.
    assert np.bincount(read_labels(tmp_path / "out" / "test_db"), minlength=3).tolist() == [1, 1, 1]


def test_small_classes_still_get_one_image_per_split_where_possible():
    items = [(f"a{i}", 0) for i in range(3)] + [(f"b{i}", 1) for i in range(2)] + [("c0", 2)]
    split = split_stratified(items, 5, 5, seed=3)
    per = {s: sorted(label for _, label in split[s]) for s in split}
    # 3 images: one each; 2 images: training and validation; 1 image: training only.
    assert per == {"train": [0, 1, 2], "val": [0, 1], "test": [0]}


def test_split_is_deterministic_for_a_seed_and_differs_for_another():
    items = [(f"x{i}", i % 2) for i in range(40)]
    assert split_stratified(items, 25, 10, 7) == split_stratified(items, 25, 10, 7)
    assert split_stratified(items, 25, 10, 7)["val"] != split_stratified(items, 25, 10, 8)["val"]


def test_min_per_class_drops_and_renumbers_and_max_caps_each_split(tmp_path):
    folder = tmp_path / "src"
    make_shapes_folder(folder, per_class=12, classes=("circle", "square"))
    make_shapes_folder(folder, per_class=3, classes=("triangle",))
    result = build(spec_for(tmp_path, folder=str(folder), val_percent=25, min_per_class=5, max_per_class=6))
    assert result["labels"] == ["circle", "square"]
    assert result["dropped_classes"] == [{"label": "triangle", "images": 3, "reason": "fewer than 5 images"}]
    # 12 per class: 3 to validation, 9 left for training, capped at 6.
    assert counts_per_class(result, "train") == [6, 6] and counts_per_class(result, "val") == [3, 3]
    assert set(read_labels(tmp_path / "out" / "train_db").tolist()) == {0, 1}
    assert (tmp_path / "out" / "labels.txt").read_text() == "circle\nsquare\n"


def test_rule_functions_directly():
    splits = {"train": [("a", 0), ("b", 1), ("c", 1), ("d", 2)], "val": [("e", 2)], "test": []}
    labels, kept, dropped = drop_small_classes(["x", "y", "z"], splits, 2)
    assert labels == ["y", "z"] and [d["label"] for d in dropped] == ["x"]
    assert kept["train"] == [("b", 0), ("c", 0), ("d", 1)] and kept["val"] == [("e", 1)]
    assert cap_per_class(kept, 1)["train"] == [("b", 0), ("d", 1)]


def test_separate_validation_and_test_folders(tmp_path):
    train = make_shapes_folder(tmp_path / "train", per_class=4)
    val = make_shapes_folder(tmp_path / "val", per_class=2, seed=1)
    test = make_shapes_folder(tmp_path / "test", per_class=1, classes=("circle", "square"), seed=2)
    (tmp_path / "val" / "hexagon").mkdir()
    (tmp_path / "val" / "hexagon" / "h.png").write_bytes((train / "circle" / "circle_0000.png").read_bytes())
    result = build(spec_for(tmp_path, folder=str(train), val_folder=str(val), test_folder=str(test), val_percent=50))
    assert result["counts"] == {"train": 12, "val": 6, "test": 2}
    assert counts_per_class(result, "test") == [1, 1, 0]
    assert {"path": "[val] hexagon/", "reason": "class not in the training folder"} in result["skipped"]


def test_a_split_without_its_own_folder_comes_from_the_training_folder(tmp_path):
    """DIGITS' rule: a separate validation folder with a test percentage still gets a test
    split (taken from the training folder), and a separate test folder with a validation
    percentage still gets a validation split."""
    train = make_shapes_folder(tmp_path / "train", per_class=10)
    val = make_shapes_folder(tmp_path / "val", per_class=2, seed=1)
    test = make_shapes_folder(tmp_path / "test", per_class=3, seed=2)
    with_val = build(spec_for(tmp_path, folder=str(train), val_folder=str(val), test_percent=20, val_percent=50))
    assert with_val["counts"] == {"train": 24, "val": 6, "test": 6}  # val from its folder, 20% of 10 per class to test
    assert counts_per_class(with_val, "test") == [2, 2, 2]
    (tmp_path / "out2").mkdir()
    with_test = build(spec_for(tmp_path, output_dir=str(tmp_path / "out2"), folder=str(train), test_folder=str(test), val_percent=30))
    assert with_test["counts"] == {"train": 21, "val": 9, "test": 9}
    assert counts_per_class(with_test, "val") == [3, 3, 3]


# --- text lists ----------------------------------------------------------------------


def test_text_lists_with_image_folder_and_every_bad_line(tmp_path):
    images = make_shapes_folder(tmp_path / "imgs", per_class=3)
    (tmp_path / "labels.txt").write_text("circle\nsquare\ntriangle\n\n")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.png"
    Image.new("RGB", (8, 8)).save(outside)
    lines = [f"circle/circle_{i:04d}.png 0" for i in range(3)] + [
        f"{images}/square/square_0000.png 1",  # absolute
        "square/square_0001.png 1",
        "triangle/triangle_0000.png 2",
        "triangle/triangle_0001.png 7",  # label out of range
        "triangle/missing.png 2",  # missing file
        "just-a-path",  # malformed
        f"{outside} 0",  # outside the roots
        "../imgs/circle/circle_0000.png 0",  # `..` that stays inside: fine
        "",
        "# a comment",
    ]
    (tmp_path / "train.txt").write_text("\n".join(lines))
    (tmp_path / "val.txt").write_text("square/square_0002.png 1\ntriangle/triangle_0002.png 2\n")
    try:
        result = build(spec_for(
            tmp_path, source="textfile", labels_file=str(tmp_path / "labels.txt"), train_list=str(tmp_path / "train.txt"),
            val_list=str(tmp_path / "val.txt"), image_folder=str(images), shuffle=False,
        ))
    finally:
        outside.unlink()
    assert result["labels"] == ["circle", "square", "triangle"]
    assert result["counts"] == {"train": 7, "val": 2}
    reasons = {s["path"].split()[0]: s["reason"] for s in result["skipped"]}
    assert reasons["train.txt:7"] == "label index 7 out of range (0-2)"
    assert reasons["train.txt:8"] == "file not found"
    assert reasons["train.txt:9"] == "expected 'path label_index'"
    assert reasons["train.txt:10"] == "outside the allowed data roots"
    # shuffle off: the training database keeps the list's order.
    assert read_labels(tmp_path / "out" / "train_db").tolist() == [0, 0, 0, 1, 1, 2, 0]


def test_text_list_shuffle_changes_order_deterministically(tmp_path):
    images = make_shapes_folder(tmp_path / "imgs", per_class=10, classes=("circle", "square"))
    (tmp_path / "labels.txt").write_text("circle\nsquare\n")
    lines = [f"circle/circle_{i:04d}.png 0" for i in range(10)] + [f"square/square_{i:04d}.png 1" for i in range(10)]
    (tmp_path / "train.txt").write_text("\n".join(lines))
    orders = []
    for run in range(2):
        spec = spec_for(tmp_path, source="textfile", labels_file=str(tmp_path / "labels.txt"),
                        train_list=str(tmp_path / "train.txt"), image_folder=str(images), shuffle=True)
        spec["output_dir"] = str(tmp_path / f"out{run}")
        Path(spec["output_dir"]).mkdir()
        build(spec)
        orders.append(read_labels(Path(spec["output_dir"]) / "train_db").tolist())
    assert orders[0] == orders[1] and orders[0] != [0] * 10 + [1] * 10


def test_labels_file_with_one_label_is_refused(tmp_path):
    (tmp_path / "labels.txt").write_text("only\n")
    (tmp_path / "train.txt").write_text("x.png 0\n")
    with pytest.raises(BuildError, match="needs two"):
        build(spec_for(tmp_path, source="textfile", labels_file=str(tmp_path / "labels.txt"), train_list=str(tmp_path / "train.txt")))


# --- archives ------------------------------------------------------------------------


def _png_bytes(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 12), color).save(buf, "PNG")
    return buf.getvalue()


def test_zip_archive_with_a_wrapping_folder_and_traversal_names(tmp_path):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"mydata/red/{i}.png", _png_bytes((255, 0, 0)))
            zf.writestr(f"mydata/blue/{i}.png", _png_bytes((0, 0, 255)))
        zf.writestr("../evil.png", _png_bytes((0, 255, 0)))
        zf.writestr("/abs/evil.png", _png_bytes((0, 255, 0)))
        link = zipfile.ZipInfo("mydata/red/link.png")
        link.external_attr = (0o120777 << 16)
        zf.writestr(link, "/etc/passwd")
    result = build(spec_for(tmp_path, source="upload", archive=str(archive), val_percent=34))
    assert result["labels"] == ["blue", "red"]
    assert result["counts"] == {"train": 4, "val": 2}
    reasons = {s["path"]: s["reason"] for s in result["skipped"]}
    assert reasons["../evil.png"] == "path leads outside the archive (not extracted)"
    assert reasons["/abs/evil.png"] == "absolute path (not extracted)"
    assert reasons["mydata/red/link.png"] == "symbolic link (not extracted)"
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()
    # Extracted images are not kept once the databases exist.
    # (A classification dataset: no label images or boxes.)
    expected = [n for n in OUTPUTS if not n.startswith("test_") and "_labels_db" not in n and "_objects" not in n]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(expected)


def test_tar_gz_archive_skips_links_and_enforces_the_size_limit(tmp_path):
    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for cls, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            for i in range(2):
                data = _png_bytes(color)
                info = tarfile.TarInfo(f"{cls}/{i}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        sym = tarfile.TarInfo("red/escape.png")
        sym.type, sym.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        tf.addfile(sym)
        evil = tarfile.TarInfo("../../outside.png")
        data = _png_bytes((0, 0, 0))
        evil.size = len(data)
        tf.addfile(evil, io.BytesIO(data))
    result = build(spec_for(tmp_path, source="upload", archive=str(archive), val_percent=50))
    assert result["counts"] == {"train": 2, "val": 2}
    reasons = {s["path"]: s["reason"] for s in result["skipped"]}
    assert reasons == {"red/escape.png": "link (not extracted)", "../../outside.png": "path leads outside the archive (not extracted)"}
    with pytest.raises(BuildError, match="expands to more than"):
        build(spec_for(tmp_path, source="upload", archive=str(archive), max_extract_bytes=100))


def test_a_file_that_is_not_an_archive(tmp_path):
    archive = tmp_path / "data.zip"
    archive.write_bytes(b"this is not an archive at all" * 10)
    with pytest.raises(BuildError, match="not a zip or tar archive"):
        build(spec_for(tmp_path, source="upload", archive=str(archive)))


# --- resize modes ----------------------------------------------------------------------


def _striped(width: int, height: int) -> Image.Image:
    """Red in the first tenth along the long side, blue in the last tenth, green between."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, :] = (0, 255, 0)
    if width >= height:
        arr[:, : width // 10] = (255, 0, 0)
        arr[:, -width // 10 :] = (0, 0, 255)
    else:
        arr[: height // 10] = (255, 0, 0)
        arr[-height // 10 :] = (0, 0, 255)
    return Image.fromarray(arr)


def _is_green(px: np.ndarray) -> bool:
    return px[1] > 200 and px[0] < 60 and px[2] < 60


@pytest.mark.parametrize("wide", [True, False], ids=["wide", "tall"])
def test_every_resize_mode_on_wide_and_tall_images(wide):
    img = _striped(200, 100) if wide else _striped(100, 200)
    out = {mode: to_array(resize_image(img, 40, 40, mode, seed=1)) for mode in ("squash", "crop", "fill", "half_crop")}
    assert all(a.shape == (40, 40, 3) for a in out.values())

    def along(a: np.ndarray, i: int) -> np.ndarray:  # pixel i along the long side, middle of the short one
        return a[20, i] if wide else a[i, 20]

    def across(a: np.ndarray, i: int) -> np.ndarray:  # pixel i along the short side, middle of the long one
        return a[i, 20] if wide else a[20, i]

    # squash: both end stripes survive at the edges, nothing is padded.
    assert along(out["squash"], 0)[0] > 200 and along(out["squash"], 39)[2] > 200
    # crop: scaled by 40/100 to 80 along the long side, the middle 40 kept: the stripes are cut off.
    assert _is_green(along(out["crop"], 0)) and _is_green(along(out["crop"], 39))
    # fill: scaled by 40/200 to 40x20, centred: rows (or columns) 0-9 and 30-39 are noise.
    assert along(out["fill"], 0)[0] > 200 and along(out["fill"], 39)[2] > 200
    assert _is_green(across(out["fill"], 20))
    assert not _is_green(across(out["fill"], 2)) and not _is_green(across(out["fill"], 37))
    noise = out["fill"][:10] if wide else out["fill"][:, :10]
    assert noise.std() > 40  # uniform noise, not a flat colour
    # half_crop: scale (0.2 + 0.4) / 2 = 0.3 -> 60x30: the long side is cropped (stripes of
    # 6 px lose 10 px from each end: gone), the short side padded with 5 px of noise.
    assert _is_green(along(out["half_crop"], 0)) and _is_green(along(out["half_crop"], 39))
    assert _is_green(across(out["half_crop"], 6)) and _is_green(across(out["half_crop"], 33))
    assert not _is_green(across(out["half_crop"], 1)) and not _is_green(across(out["half_crop"], 38))


def test_resize_noise_is_reproducible_for_a_seed():
    img = _striped(200, 100)
    a = to_array(resize_image(img, 40, 40, "fill", seed=5))
    assert np.array_equal(a, to_array(resize_image(img, 40, 40, "fill", seed=5)))
    assert not np.array_equal(a, to_array(resize_image(img, 40, 40, "fill", seed=6)))


# --- encodings, grayscale, mean --------------------------------------------------------


@pytest.mark.parametrize("encoding", ["none", "png", "jpeg"])
def test_each_encoding_round_trips(tmp_path, encoding):
    folder = make_shapes_folder(tmp_path / "src", per_class=4, classes=("circle", "square"))
    build(spec_for(tmp_path, folder=str(folder), encoding=encoding, jpeg_quality=95))
    out = tmp_path / "out"
    meta = read_meta(out / "train_db")
    assert meta["encoding"] == encoding and meta["count"] == 8
    images, labels = stored(out, "train")
    assert all(img.shape == (16, 16, 3) and img.dtype == np.uint8 for img in images)
    with open_readonly(out / "train_db").begin() as txn:
        raw = bytes(txn.get(b"%010d" % 0))[4:]
    if encoding == "none":
        assert len(raw) == 16 * 16 * 3
    elif encoding == "png":
        assert raw.startswith(b"\x89PNG")
    else:
        assert raw.startswith(b"\xff\xd8")
    # Whatever the encoding, the pixels are those of the resized source image (JPEG: within its loss).
    source = {p.name: p for p in folder.rglob("*.png")}
    expected = [to_array(resize_image(load_image(str(p), 3), 16, 16, "squash")) for p in sorted(source.values())]
    for img in images:
        best = min(np.abs(img.astype(int) - e.astype(int)).mean() for e in expected)
        assert best == 0 if encoding != "jpeg" else 0 < best < 10, best  # chroma subsampling at 16 px


def test_grayscale_and_the_mean_image(tmp_path):
    folder = make_shapes_folder(tmp_path / "src", per_class=6)
    result = build(spec_for(tmp_path, folder=str(folder), channels=1, width=12, height=10, val_percent=34))
    out = tmp_path / "out"
    images, _ = stored(out, "train")
    assert images[0].shape == (10, 12, 1)
    mean = np.load(out / "mean.npy")
    assert mean.shape == (10, 12, 1)
    assert np.allclose(mean, np.mean(np.stack(images).astype(np.float64), axis=0), atol=1e-3)
    assert result["mean_pixel"] == pytest.approx([float(mean.mean())], abs=1e-3)
    with Image.open(out / "mean.png") as png:
        assert png.mode == "L" and png.size == (12, 10)
    # The trainer's reader yields the stored image CxHxW, as it was stored.
    from models_app.training.data import RawLmdbImages

    x, label = RawLmdbImages(out / "train_db")[0]
    assert tuple(x.shape) == (1, 10, 12) and 0 <= label < 3
    assert np.array_equal(x.numpy(), images[0].transpose(2, 0, 1))


# --- input formats -----------------------------------------------------------------------


@pytest.mark.parametrize("ext,fmt", [
    ("png", "PNG"), ("jpg", "JPEG"), ("bmp", "BMP"), ("ppm", "PPM"), ("gif", "GIF"), ("webp", "WEBP"), ("tiff", "TIFF"),
])
def test_every_input_format_loads(tmp_path, ext, fmt):
    path = tmp_path / f"img.{ext}"
    Image.new("RGB", (20, 10), (200, 30, 30)).save(path, fmt)
    img = load_image(str(path), 3)
    assert img.size == (20, 10) and img.mode == "RGB"
    assert abs(int(np.asarray(img)[5, 10, 0]) - 200) < 12


def test_pgm_loads_as_grayscale(tmp_path):
    Image.new("L", (6, 4), 77).save(tmp_path / "g.pgm")
    assert np.asarray(load_image(str(tmp_path / "g.pgm"), 1)).tolist() == [[77] * 6] * 4


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    if mode == "P":
        img = Image.new("P", (4, 4), 0)
        img.putpalette([10, 20, 30] * 256)
        img.info["transparency"] = 0
    else:
        img = Image.new(mode, (4, 4), (0, 0, 0, 0) if mode == "RGBA" else (0, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    buf.seek(0)
    assert np.asarray(load_image(buf, 3))[0, 0].tolist() == [255, 255, 255]


def test_cmyk_16bit_and_exif_orientation(tmp_path):
    Image.new("CMYK", (5, 5), (0, 255, 255, 0)).save(tmp_path / "c.jpg", "JPEG")
    red = np.asarray(load_image(str(tmp_path / "c.jpg"), 3))[2, 2]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    Image.fromarray(np.full((3, 3), 65535, dtype=np.uint16)).save(tmp_path / "w16.png")
    Image.fromarray(np.full((3, 3), 32896, dtype=np.uint16)).save(tmp_path / "m16.png")
    assert np.asarray(load_image(str(tmp_path / "w16.png"), 1))[0, 0] == 255
    assert np.asarray(load_image(str(tmp_path / "m16.png"), 1))[0, 0] == 128

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.new("RGB", (40, 20), (0, 0, 0)).save(tmp_path / "o.jpg", "JPEG", exif=exif)
    assert load_image(str(tmp_path / "o.jpg"), 3).size == (20, 40)
    # With the draft-decoding hint (final size 10x20) it decodes at half scale, still upright.
    assert load_image(str(tmp_path / "o.jpg"), 3, (10, 20)).size == (10, 20)


def test_jpeg_draft_decoding_matches_size_and_content(tmp_path):
    arr = np.zeros((400, 600, 3), dtype=np.uint8)
    arr[:, :300] = (250, 0, 0)
    Image.fromarray(arr).save(tmp_path / "big.jpg", quality=95)
    full = to_array(resize_image(load_image(str(tmp_path / "big.jpg"), 3), 60, 40, "squash"))
    fast = to_array(resize_image(load_image(str(tmp_path / "big.jpg"), 3, (60, 40)), 60, 40, "squash"))
    assert fast.shape == full.shape == (40, 60, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3


# --- bad input -------------------------------------------------------------------------


def _bomb_png(path: Path, side: int) -> None:
    """A tiny PNG whose header claims side x side pixels."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))


def test_bad_files_are_skipped_with_reasons(tmp_path):
    folder = make_shapes_folder(tmp_path / "src", per_class=3, classes=("circle", "square"))
    good = (folder / "circle" / "circle_0000.png").read_bytes()
    (folder / "circle" / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "circle" / "garbage.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "circle" / "notes.txt").write_text("hello")
    _bomb_png(folder / "square" / "bomb.png", 17000)  # 289 M pixels: over the 256 M limit
    (folder / "empty").mkdir()
    (folder / "square" / "loop").symlink_to(folder / "square")  # a symlink loop
    (folder / "square" / "link.png").symlink_to(folder / "circle" / "circle_0000.png")
    result = build(spec_for(tmp_path, folder=str(folder)))
    reasons = {s["path"]: s["reason"] for s in result["skipped"]}
    assert reasons["circle/truncated.png"].startswith("not a readable image")
    assert reasons["circle/garbage.jpg"].startswith("not a readable image")
    assert reasons["circle/notes.txt"] == "not an image file (by extension)"
    assert reasons["square/bomb.png"].startswith("image too large")
    assert reasons["empty/"] == "empty class folder (no images): class left out"
    assert reasons["square/loop"] == "symbolic link (not followed)"
    assert reasons["square/link.png"] == "symbolic link (not followed)"
    assert result["labels"] == ["circle", "square"] and result["counts"]["train"] == 6


def test_unreadable_images_leave_no_gap_in_the_database(tmp_path, monkeypatch):
    """The workers write each image at its position in the split; the ones that cannot be
    read leave gaps that the build closes, in order, across chunks (3 images per chunk)."""
    import datasets.build

    monkeypatch.setattr(datasets.build, "chunk_size_for", lambda *_: 3)
    folder = tmp_path / "imgs"
    folder.mkdir()
    bad = {0, 4, 5, 11, 19}
    lines = []
    for i in range(20):
        path = folder / f"img{i:02d}.png"
        if i in bad:
            path.write_bytes(b"not a png")
        else:
            Image.new("RGB", (16, 16), (i * 10, 0, 0)).save(path)
        lines.append(f"{path} {i % 2}")
    (tmp_path / "labels.txt").write_text("even\nodd\n")
    (tmp_path / "train.txt").write_text("\n".join(lines))
    result = build(spec_for(
        tmp_path, source="textfile", labels_file=str(tmp_path / "labels.txt"), train_list=str(tmp_path / "train.txt"),
        shuffle=False, encoding="png",
    ))
    good = [i for i in range(20) if i not in bad]
    assert result["counts"]["train"] == len(good)
    assert len(result["skipped"]) == len(bad)
    images, labels = stored(tmp_path / "out", "train")
    assert [int(img[0, 0, 0]) // 10 for img in images] == good
    assert labels == [i % 2 for i in good] == read_labels(tmp_path / "out" / "train_db").tolist()
    with open_readonly(tmp_path / "out" / "train_db").begin() as txn:
        assert txn.stat()["entries"] == len(good) + 2  # the records, the meta data and the labels
    # Each record's source file, by the record's index after the gaps were closed.
    assert read_paths(tmp_path / "out", "train", list(range(len(good)))) == [str(folder / f"img{i:02d}.png") for i in good]
    assert read_paths(tmp_path / "out", "train", [len(good), -1]) == [None, None]


def test_a_decoding_process_that_dies_fails_the_build_instead_of_hanging(tmp_path, monkeypatch):
    """A pool worker killed mid-chunk (the OOM killer, a kill -9): the build stops with a
    message that says so, and leaves nothing behind, instead of waiting for the chunk."""
    import datasets.build

    folder = make_shapes_folder(tmp_path / "src", per_class=6)
    poison = str(sorted(folder.rglob("*.png"))[4])
    original = datasets.build.Encoder.__call__

    def dying(self, chunk, *args):
        if any(path == poison for _, path, _ in chunk.items):
            os._exit(9)
        return original(self, chunk, *args)

    monkeypatch.setattr(datasets.build, "chunk_size_for", lambda *_: 3)
    monkeypatch.setattr(datasets.build.Encoder, "__call__", dying)
    with pytest.raises(BuildError, match="ended abruptly: killed, or out of memory"):
        build(spec_for(tmp_path, folder=str(folder), val_percent=25))
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)


def test_single_class_and_nothing_usable_fail_without_leftovers(tmp_path):
    one = make_shapes_folder(tmp_path / "one", per_class=2, classes=("circle",))
    with pytest.raises(BuildError, match="needs at least two"):
        build(spec_for(tmp_path, folder=str(one)))
    bad = tmp_path / "bad"
    for cls in ("a", "b"):
        (bad / cls).mkdir(parents=True)
        (bad / cls / "x.png").write_bytes(b"nope")
    with pytest.raises(BuildError, match="Fewer than two classes have usable images"):
        build(spec_for(tmp_path, folder=str(bad)))
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)


def test_a_full_disk_fails_with_a_clear_message_and_no_partial_files(tmp_path):
    """RLIMIT_FSIZE makes LMDB's writes fail exactly as a full disk does (EFBIG/ENOSPC)."""
    folder = make_shapes_folder(tmp_path / "src", per_class=40)
    spec = spec_for(tmp_path, folder=str(folder), width=64, height=64, encoding="none")
    (tmp_path / "spec.json").write_text(__import__("json").dumps(spec))
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN);"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000));"
        "from datasets.build import main; sys.exit(main(['--spec', sys.argv[1]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "spec.json")], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parent.parent, timeout=120, env={**os.environ, "PYTHONPATH": "."},
    )
    assert proc.returncode == 1, proc.stderr
    assert "may be full" in proc.stdout and "free some space" in proc.stdout
    assert sorted(os.listdir(tmp_path / "out")) == []


def test_the_build_spec_is_typed_and_its_defaults_declared_once(tmp_path, capsys):
    """The worker and the build child share one typed spec; the Dataset model takes its
    defaults from it, and the form and the API take every option from the model (label,
    default, choices, validators); a misspelt field is refused by the child."""
    from datasets.api import DatasetInputSerializer
    from datasets.build import main
    from datasets.forms import DatasetForm
    from datasets.models import PARAM_FIELDS, Dataset
    from datasets.spec import DEFAULTS, BuildSpec

    for model_field, spec_field in (("image_width", "width"), ("val_percent", "val_percent"), ("encoding", "encoding"),
                                    ("jpeg_quality", "jpeg_quality"), ("seed", "seed"), ("shuffle", "shuffle")):
        default = getattr(DEFAULTS, spec_field)
        assert Dataset._meta.get_field(model_field).default == default
        assert DatasetForm.base_fields[model_field].initial == default
    serializer_fields = DatasetInputSerializer().fields
    for name in PARAM_FIELDS:
        field = Dataset._meta.get_field(name)
        form_field = DatasetForm.base_fields[name]
        assert form_field.label == field.verbose_name[:1].upper() + field.verbose_name[1:]
        assert form_field.help_text == field.help_text
        # Every option has a default, so a request need only name what it changes.
        assert field.has_default() or field.blank
        assert not serializer_fields[name].required
        if field.choices:
            assert list(serializer_fields[name].choices) == [value for value, _ in field.choices]
    assert serializer_fields["image_width"].max_value == 4096 and serializer_fields["jpeg_quality"].min_value == 1
    # The page shows every field of the form somewhere.
    assert DatasetForm.shown_fields() == set(DatasetForm.base_fields)
    spec = BuildSpec(output_dir=str(tmp_path), folder="/x", val_percent=10)
    assert BuildSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**spec.to_dict(), "val_precent": 10}))
    assert main(["--spec", str(path)]) == 1
    error = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert error["event"] == "error" and "unknown spec field(s): val_precent" in error["message"]


def test_a_build_run_again_into_its_folder_replaces_what_it_had_moved(tmp_path):
    """A retried build job (its worker killed while it moved its outputs into place) runs
    again into the same folder: it replaces the databases there, with the same content."""
    from datasets.lmdb_store import content_digest, forget

    folder = make_shapes_folder(tmp_path / "src", per_class=8)
    spec = spec_for(tmp_path, folder=str(folder), val_percent=25, encoding="png")
    first = build(spec)
    for split in ("train", "val"):
        forget(tmp_path / "out" / f"{split}_db")
    (tmp_path / "out" / "labels.txt").unlink()  # as if it stopped half-way through the moves
    again = build(spec)
    assert again["counts"] == first["counts"] and again["checksums"] == first["checksums"]
    # The recorded checksum is the database's content digest (what a reader can check).
    assert again["checksums"]["train"] == content_digest(tmp_path / "out" / "train_db") != again["checksums"]["val"]
    assert (tmp_path / "out" / "labels.txt").read_text().split() == again["labels"]
    assert not (tmp_path / "out" / "build.tmp").exists()


def test_chunks_cover_every_split_in_order_and_shrink_towards_the_end():
    from datasets.build import chunk_bounds

    bounds = chunk_bounds([1000, 300, 7], 64, 2)
    for split_no, size in enumerate([1000, 300, 7]):
        mine = [(start, end) for s, start, end in bounds if s == split_no]
        assert mine[0][0] == 0 and mine[-1][1] == size
        assert all(a[1] == b[0] for a, b in zip(mine, mine[1:]))  # contiguous, no overlap
    sizes = [end - start for _, start, end in bounds]
    assert max(sizes) == 64 and sizes[0] == 64
    # The last chunks of the stream are small: the workers finish close together.
    assert all(n <= 16 for n in sizes[-4:]) and sizes[-5] < 64
    assert chunk_bounds([5], 3, 2) == [(0, 0, 3), (0, 3, 5)]


def test_a_decoding_process_that_raises_fails_the_build_with_its_error(tmp_path, monkeypatch, capfd):
    """An unexpected error in a worker (not a full disk): the build says which, the job log
    gets its traceback, and nothing is left behind."""
    import datasets.build

    folder = make_shapes_folder(tmp_path / "src", per_class=6)
    poison = str(sorted(folder.rglob("*.png"))[4])
    original = datasets.build.Encoder.__call__

    def failing(self, chunk, *args):
        if any(path == poison for _, path, _ in chunk.items):
            raise RuntimeError("a bug in the encoder")
        return original(self, chunk, *args)

    monkeypatch.setattr(datasets.build, "chunk_size_for", lambda *_: 3)
    monkeypatch.setattr(datasets.build.Encoder, "__call__", failing)
    with pytest.raises(BuildError, match=r"A decoding process failed \(RuntimeError: a bug in the encoder\)"):
        build(spec_for(tmp_path, folder=str(folder), val_percent=25))
    assert "Traceback" in capfd.readouterr().err
    assert not any((tmp_path / "out" / name).exists() for name in OUTPUTS)


def test_the_pixel_sum_is_exact_across_folds_and_totals(monkeypatch):
    from datasets.build import PixelSum

    rng = np.random.default_rng(0)
    images = [rng.integers(200, 256, size=(5, 4, 3), dtype=np.uint8) for _ in range(700)]
    monkeypatch.setattr(PixelSum, "LIMIT", 300)  # a uint32 total "full" after 300 images
    pixel_sum, totals = PixelSum(), []
    assert pixel_sum.take() is None  # nothing added: nothing held, nothing sent
    for image in images:
        pixel_sum.add(image)
        if pixel_sum.due():
            totals.append(pixel_sum.take())
    totals.append(pixel_sum.take())
    assert len(totals) == 3 and all(t.dtype == np.uint32 for t in totals)
    assert (sum(t.astype(np.uint64) for t in totals) == np.sum(images, axis=0, dtype=np.uint64)).all()

    # Chunks of small images summed at once (up to 257 of 255s fill a uint16), mixed with
    # images added one by one: the same exact sum.
    full = [np.full((5, 4, 3), 255, dtype=np.uint8)] * 257
    pixel_sum = PixelSum()
    pixel_sum.add(images[0])
    pixel_sum.add_many(full)
    pixel_sum.add_many([])
    pixel_sum.add(images[1])
    pixel_sum.add_many(images[2:200])
    expected = np.sum([images[0], *full, *images[1:200]], axis=0, dtype=np.uint64)
    assert (pixel_sum.take().astype(np.uint64) == expected).all()


def test_a_file_name_that_is_not_utf8_is_built_and_named_with_a_replacement_character(tmp_path):
    folder = make_shapes_folder(tmp_path / "src", per_class=4)
    first = sorted((folder / "circle").iterdir())[0]
    os.rename(os.fsencode(first), os.fsencode(first.parent) + b"/caf\xe9.png")  # Latin-1, not UTF-8
    result = build(spec_for(tmp_path, folder=str(folder)))
    assert result["counts"]["train"] == 12 and not result["skipped"]
    names = read_paths(tmp_path / "out", "train", list(range(12)))
    assert "circle/caf\ufffd.png" in names
