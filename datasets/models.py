"""Image classification datasets. Each dataset is a job (shared primary key)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from workers.models import Job

from .spec import DEFAULTS


class ImageMode(models.TextChoices):
    COLOR = "color", "Color (3 channels)"
    GRAYSCALE = "grayscale", "Grayscale (1 channel)"


class ResizeMode(models.TextChoices):
    SQUASH = "squash", "Squash (stretch to size)"
    CROP = "crop", "Crop (keep aspect, centre-crop)"
    FILL = "fill", "Fill (keep aspect, pad with noise)"
    HALF_CROP = "half_crop", "Half crop, half fill"


class Encoding(models.TextChoices):
    NONE = "none", "None (raw pixels: fastest to read, largest)"
    PNG = "png", "PNG (lossless)"
    JPEG = "jpeg", "JPEG (lossy, smallest)"


class Task(models.TextChoices):
    CLASSIFICATION = "classification", "Classification (a class per image)"
    SEGMENTATION = "segmentation", "Segmentation (a class per pixel)"
    DETECTION = "detection", "Object detection (boxes)"


class Source(models.TextChoices):
    FOLDER = "folder", "Server folder"
    TEXTFILE = "textfile", "Text files"
    UPLOAD = "upload", "Uploaded archive"
    S3 = "s3", "S3 bucket"
    PLUGIN = "plugin", "A data plugin"


class S3Credential(models.Model):
    """A person's access to an S3-compatible object store, reusable by name: the endpoint,
    the access key id, and the secret key encrypted (datasets/credentials.py; never shown
    again, never written to a log or a job spec: the build child gets it in its
    environment)."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="s3_credentials")
    name = models.CharField(max_length=100, help_text="What you call it; datasets name it by this.")
    endpoint_url = models.CharField(
        "endpoint URL", max_length=500, blank=True,
        help_text="The S3 API's address, e.g. https://s3.eu-west-1.amazonaws.com or http://minio.lan:9000; empty: AWS.",
    )
    region = models.CharField(max_length=50, blank=True, help_text="e.g. us-east-1; empty: the endpoint's default.")
    access_key_id = models.CharField("access key id", max_length=200)
    secret_encrypted = models.BinaryField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["owner", "name"], name="one_s3_credential_name_per_owner")]

    def __str__(self) -> str:
        return f"{self.name} ({self.endpoint_url or 'AWS'})"


class Upload(models.Model):
    """An archive uploaded in chunks (resumable). Its bytes live at `path`; once complete
    it can feed any number of dataset builds (a clone reuses it)."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="uploads")
    filename = models.CharField(max_length=255)
    size = models.BigIntegerField(help_text="Total size the client announced, in bytes.")
    received = models.BigIntegerField(default=0)
    complete = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.filename} ({self.received}/{self.size} bytes)"

    @property
    def path(self) -> Path:
        return Path(settings.DATA_DIR) / "uploads" / f"{self.pk}.bin"


MAX_IMAGE_SIDE = 4096

# The job kind of a dataset build (datasets/kind.py registers it with the job engine).
DATASET_KIND = "dataset"


class Dataset(models.Model):
    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="dataset")
    # The options a person chooses: declared here once. The form (datasets/forms.py) and
    # the API (datasets/api.py) derive their fields, labels, defaults and validators from
    # these, and `dataset_create` checks a request against them (PARAM_FIELDS below).
    task = models.CharField(max_length=16, choices=Task.choices, default=Task.CLASSIFICATION)
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.FOLDER)
    # Folder source: training folder, and optional separate validation / test folders.
    folder = models.CharField(
        "training images folder", max_length=1000, blank=True,
        help_text="A server folder with one subfolder of images per class (sorted subfolder names become the labels; "
        "nested folders are walked).",
    )
    val_folder = models.CharField("separate validation folder (optional)", max_length=1000, blank=True)
    # Segmentation: the images are in `folder` (no class subfolders), their label images
    # (same file names) in `label_folder`, and the classes in `class_list`.
    label_folder = models.CharField(
        "labels folder", max_length=1000, blank=True,
        help_text="Segmentation: a server folder with a PNG per image, of the same name, holding class ids "
        "(gray or palette) or the class list's colours (RGB); 255 means 'ignore'. Detection: a KITTI label file "
        "(.txt) per image, of the same name.",
    )
    class_list = models.CharField(
        "class list (server path)", max_length=1000, blank=True,
        help_text="Segmentation: line i names class i, optionally with its colour: `road 128 64 128`. Detection "
        "(optional): the classes to keep, in this order.",
    )
    annotations_file = models.CharField(
        "COCO annotations file (server path)", max_length=1000, blank=True,
        help_text="Detection, instead of KITTI label files: a COCO JSON file; its file names are under the images folder.",
    )
    test_folder = models.CharField("separate test folder (optional)", max_length=1000, blank=True)
    # Text-file source: lists of `path label_index` lines and a labels file (stored in the
    # job folder when uploaded; server paths otherwise).
    train_list = models.CharField(
        "training list (server path)", max_length=1000, blank=True,
        help_text="Lines of `path label_index`; relative paths are taken under the image folder.",
    )
    val_list = models.CharField("validation list (server path, optional)", max_length=1000, blank=True)
    test_list = models.CharField("test list (server path, optional)", max_length=1000, blank=True)
    labels_file = models.CharField(
        "labels file (server path)", max_length=1000, blank=True, help_text="Line i is the name of label i."
    )
    image_folder = models.CharField(
        "image folder (optional)", max_length=1000, blank=True, help_text="Prefix for relative paths in the lists."
    )
    shuffle = models.BooleanField(default=DEFAULTS.shuffle, help_text="Shuffle the order of each list.")
    # Upload source.
    upload = models.ForeignKey(Upload, null=True, blank=True, on_delete=models.SET_NULL, related_name="datasets")
    # S3 source: class subfolders under `s3_prefix` in `s3_bucket` (DIGITS' layout:
    # prefix/<class>/<image>), optionally separate validation and test prefixes; read with
    # the owner's credential (given by name when the dataset is made).
    s3_credential = models.ForeignKey(S3Credential, null=True, blank=True, on_delete=models.SET_NULL, related_name="datasets")
    s3_bucket = models.CharField("bucket", max_length=255, blank=True)
    s3_prefix = models.CharField(
        "prefix", max_length=1000, blank=True,
        help_text="The training images: one subfolder (key prefix) per class under it, e.g. `shapes/train/`.",
    )
    s3_val_prefix = models.CharField("separate validation prefix (optional)", max_length=1000, blank=True)
    s3_test_prefix = models.CharField("separate test prefix (optional)", max_length=1000, blank=True)
    # Plugin source (datasets/plugins.py): an installed data plugin and its options.
    plugin = models.CharField(max_length=100, blank=True, help_text="The data plugin's name (its entry point).")
    plugin_options = models.JSONField(default=dict, blank=True)
    image_width = models.PositiveIntegerField(
        "width", default=DEFAULTS.width, validators=[MinValueValidator(1), MaxValueValidator(MAX_IMAGE_SIDE)]
    )
    image_height = models.PositiveIntegerField(
        "height", default=DEFAULTS.height, validators=[MinValueValidator(1), MaxValueValidator(MAX_IMAGE_SIDE)]
    )
    image_mode = models.CharField("image type", max_length=16, choices=ImageMode.choices, default=ImageMode.COLOR)
    resize_mode = models.CharField(max_length=16, choices=ResizeMode.choices, default=DEFAULTS.resize_mode)
    encoding = models.CharField("image encoding", max_length=8, choices=Encoding.choices, default=DEFAULTS.encoding)
    jpeg_quality = models.PositiveSmallIntegerField(
        "JPEG quality", default=DEFAULTS.jpeg_quality, validators=[MinValueValidator(1), MaxValueValidator(100)]
    )
    val_percent = models.FloatField(
        "% for validation", default=DEFAULTS.val_percent, validators=[MinValueValidator(0), MaxValueValidator(99)],
        help_text="Per class, and at least one image per class where possible. Used for the splits that have no "
        "separate folder or list of their own.",
    )
    test_percent = models.FloatField(
        "% for test", default=DEFAULTS.test_percent, validators=[MinValueValidator(0), MaxValueValidator(99)]
    )
    min_per_class = models.PositiveIntegerField(
        "minimum images per class", default=DEFAULTS.min_per_class,
        help_text="Classes with fewer images (all splits together) are left out and reported. 0: keep all.",
    )
    max_per_class = models.PositiveIntegerField(
        "maximum images per class, per split", default=DEFAULTS.max_per_class, help_text="0: no limit."
    )
    seed = models.BigIntegerField(
        default=DEFAULTS.seed, validators=[MinValueValidator(0), MaxValueValidator(2**63 - 1)],
        help_text="Same seed, same split and same noise padding.",
    )
    # Filled in when the build finishes.
    labels = models.JSONField(default=list, blank=True)
    counts = models.JSONField(default=dict, blank=True)  # {"train": n, "val": n, "test": n}
    class_counts = models.JSONField(default=dict, blank=True)  # {"train": [n per class], ...}
    skipped = models.JSONField(default=list, blank=True)  # [{"path", "reason"}]
    dropped_classes = models.JSONField(default=list, blank=True)  # [{"label", "images", "reason"}]
    mean_pixel = models.JSONField(default=list, blank=True)
    # Segmentation: each class's colour ([r, g, b] per class id), and the pixels per split
    # labelled "ignore" (255: padding, void).
    label_colours = models.JSONField(default=list, blank=True)
    ignored_pixels = models.JSONField(default=dict, blank=True)
    build_seconds = models.FloatField(null=True, blank=True)
    # A digest of each split's content (datasets.lmdb_store.content_digest), in every run's record.
    checksums = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return self.job.name

    @property
    def channels(self) -> int:
        return 3 if self.image_mode == ImageMode.COLOR else 1

    @property
    def is_segmentation(self) -> bool:
        return self.task == Task.SEGMENTATION

    @property
    def is_detection(self) -> bool:
        return self.task == Task.DETECTION

    def objects_path(self, split: str) -> Path:
        """Detection: the boxes of a split (`boxes`, `labels`, and `offsets`: record i's
        objects are rows offsets[i]:offsets[i + 1])."""
        return self.directory / f"{split}_objects.npz"

    def label_split_path(self, split: str) -> Path:
        """Segmentation: the label images of a split (record i is the label of image i)."""
        return self.directory / f"{split}_labels_db"

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def directory(self) -> Path:
        return self.job.directory

    def split_path(self, split: str) -> Path:
        return self.directory / f"{split}_db"

    @property
    def mean_path(self) -> Path:
        return self.directory / "mean.npy"

    def load_mean(self) -> np.ndarray:
        return np.load(self.mean_path)

    @property
    def total_images(self) -> int:
        return sum((self.counts or {}).values())

    @property
    def splits(self) -> list[str]:
        return [s for s in ("train", "val", "test") if s in self.counts]

    @property
    def source_display(self) -> str:
        if self.source == Source.UPLOAD:
            return self.upload.filename if self.upload else "(upload deleted)"
        if self.source == Source.TEXTFILE:
            return self.train_list
        if self.source == Source.S3:
            return f"s3://{self.s3_bucket}/{self.s3_prefix}"
        if self.source == Source.PLUGIN:
            return f"{self.plugin} plugin"
        return self.folder

    def class_count_rows(self) -> list[tuple[str, list[int]]]:
        """(label, [count per split]) for the dataset page's table and chart."""
        splits = self.splits
        return [(label, [self.class_counts[s][i] for s in splits]) for i, label in enumerate(self.labels)]


# The fields of a dataset request (besides the job's name, group and notes, and the upload,
# which is checked against its owner): what the form, the API and `dataset_create` accept.
PARAM_FIELDS = (
    "task", "source", "folder", "val_folder", "test_folder", "label_folder", "class_list", "annotations_file",
    "train_list", "val_list", "test_list", "labels_file", "image_folder", "shuffle",
    "s3_bucket", "s3_prefix", "s3_val_prefix", "s3_test_prefix", "plugin",
    "image_width", "image_height", "image_mode", "resize_mode", "encoding", "jpeg_quality",
    "val_percent", "test_percent", "min_per_class", "max_per_class", "seed",
)


def param_field(name: str) -> models.Field:
    """The model field of an option (its label, default and validators)."""
    field = Dataset._meta.get_field(name)
    assert isinstance(field, models.Field), name
    return field
