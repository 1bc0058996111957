"""DICOM images with contours as segmentation ground truth: a DIGITS-NG data plugin, after
DIGITS' Sunnybrook plugin.

A folder (walked) of DICOM files; next to each image, or at the same place under a contour
folder, a contour file named after it, `<image stem>*contour*.txt`, with one `x y` point per line (a polygon
in the image's pixels, as the Sunnybrook Cardiac Data's i-contours). The inside of the
polygon is the class, the rest the background. Images without a contour file are left out
(Sunnybrook outlines only some slices). The pixels are mapped to 8 bits through the file's
own window (WindowCenter/WindowWidth) when it has one, else from its darkest to its
brightest pixel.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from datasets.plugins import DataPlugin, Field, PluginInputError

SUFFIXES = (".dcm", ".dicom")


class DicomSegmentation(DataPlugin):
    name = "dicom-segmentation"
    label = "DICOM images with contours"
    task = "segmentation"
    fields = (
        Field("image_folder", "DICOM folder", kind="path", help="A server folder of .dcm files (subfolders are walked)."),
        Field("contour_folder", "Contour folder", kind="path", required=False,
              help="Where the `<image stem>*contour*.txt` files are; empty: next to their images."),
        Field("class_name", "Class name", default="region", required=False, help="The name of what the contours outline."),
        Field("window", "Intensity", kind="choice", choices=("file", "minmax"), default="file", required=False,
              help="file: the DICOM window when it has one; minmax: darkest to brightest pixel of each image."),
    )

    def _pairs(self) -> list[tuple[str, str]]:
        """(image, contour) pairs. A contour is found by its image's folder (relative to the
        image folder, mirrored under a separate contour folder) and stem: series of several
        patients reuse the same file names. Links are not followed (as a folder source)."""
        images = Path(self.options["image_folder"])
        contours = Path(self.options.get("contour_folder") or images)
        by_place: dict[tuple[str, str], Path] = {}
        for path in sorted(contours.rglob("*.txt")):
            if path.is_symlink() or "contour" not in path.name:
                continue
            # IM-0001-0048-icontour-manual.txt (Sunnybrook), slice_contour.txt: the image's stem.
            stem = re.sub(r"[-_. ]?[A-Za-z0-9]*contour.*$", "", path.name)
            by_place.setdefault((str(path.parent.relative_to(contours)), stem), path)
        pairs = []
        for path in sorted(p for p in images.rglob("*") if p.suffix.lower() in SUFFIXES and not p.is_symlink()):
            contour = by_place.get((str(path.parent.relative_to(images)), path.stem))
            if contour is not None:
                pairs.append((str(path), str(contour)))
        return pairs

    def check(self) -> None:
        if not self._pairs():
            raise PluginInputError("image_folder", "No DICOM file (.dcm) there has a contour file (`<its stem>*contour*.txt`).")

    def labels(self) -> list[str]:
        return ["background", self.options.get("class_name") or "region"]

    def colours(self) -> list[tuple[int, int, int]]:
        return [(0, 0, 0), (220, 40, 40)]

    def entries(self) -> list[Any]:
        return self._pairs()

    def describe(self, entry: Any) -> str:
        return str(Path(entry[0]).relative_to(self.options["image_folder"]))

    def load(self, entry: Any) -> tuple[np.ndarray, np.ndarray]:
        import pydicom
        from PIL import Image, ImageDraw

        image_path, contour_path = entry
        dataset = pydicom.dcmread(image_path)
        pixels = dataset.pixel_array.astype(np.float64)
        if pixels.ndim != 2:
            raise ValueError(f"a {pixels.ndim}-dimensional image (one slice, one channel expected)")
        pixels = pixels * float(getattr(dataset, "RescaleSlope", 1) or 1) + float(getattr(dataset, "RescaleIntercept", 0) or 0)
        centre, width = getattr(dataset, "WindowCenter", None), getattr(dataset, "WindowWidth", None)
        if self.options.get("window", "file") == "file" and centre is not None and width is not None:
            centre = float(centre[0] if isinstance(centre, pydicom.multival.MultiValue) else centre)
            width = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
            low, high = centre - width / 2, centre + width / 2
        else:
            low, high = float(pixels.min()), float(pixels.max())
        scaled = np.clip((pixels - low) / max(high - low, 1e-9) * 255, 0, 255).round().astype(np.uint8)
        points = [tuple(map(float, line.split()[:2])) for line in Path(contour_path).read_text().splitlines() if line.strip()]
        if len(points) < 3:
            raise ValueError(f"{Path(contour_path).name} has {len(points)} point(s): a contour needs three")
        mask = Image.new("L", (scaled.shape[1], scaled.shape[0]), 0)
        ImageDraw.Draw(mask).polygon(points, fill=1)
        return scaled, np.asarray(mask, dtype=np.uint8)
