"""The dataset build's job spec: one typed object that the worker writes
(`datasets.services.dataset_build_spec`) and the build child reads (`datasets/build.py`).

The defaults of a dataset's options are declared here, once: the Dataset model's fields,
the form and the API take theirs from `DEFAULTS`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from workers.protocol import spec_from_dict


@dataclass(frozen=True)
class BuildSpec:
    output_dir: str = ""
    data_roots: list[str] = field(default_factory=list)
    # What the dataset is for: "classification" (a label per image), "segmentation" (a
    # label image per image: `label_folder`, with the classes and colours of `class_list`)
    # or "detection" (boxes).
    task: str = "classification"
    label_folder: str = ""
    class_list: str = ""
    # Detection: the boxes from KITTI label files (`label_folder`) or a COCO JSON file;
    # `class_list`, when set, picks the classes (and their order).
    annotations_file: str = ""
    # The source: a folder of class subfolders, text lists, or an uploaded archive.
    source: str = "folder"
    folder: str = ""
    val_folder: str = ""
    test_folder: str = ""
    train_list: str = ""
    val_list: str = ""
    test_list: str = ""
    labels_file: str = ""
    image_folder: str = ""
    shuffle: bool = True
    archive: str = ""
    max_extract_bytes: int = 8 << 30
    # S3: class subfolders under each prefix (datasets/s3.py). The keys come in the child's
    # environment (DIGITS_S3_ACCESS_KEY_ID, DIGITS_S3_SECRET_ACCESS_KEY), never in this file.
    s3_endpoint: str = ""
    s3_region: str = ""
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_val_prefix: str = ""
    s3_test_prefix: str = ""
    s3_threads: int = 16
    s3_connect_timeout: float = 5.0
    s3_read_timeout: float = 30.0
    # A data plugin (datasets/plugins.py): its entry point's name and its options.
    plugin: str = ""
    plugin_options: dict[str, Any] = field(default_factory=dict)
    # The options a person chooses.
    width: int = 28
    height: int = 28
    channels: int = 3
    resize_mode: str = "squash"
    encoding: str = "png"
    jpeg_quality: int = 90
    val_percent: float = 25.0
    test_percent: float = 0.0
    min_per_class: int = 0
    max_per_class: int = 0
    seed: int = 0
    # Decode processes (0: one per core).
    workers: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildSpec:
        return spec_from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULTS = BuildSpec()
