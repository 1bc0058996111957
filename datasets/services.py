"""Writes for datasets: validation of a request, creation, queueing, build results."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from workers import storage
from workers.errors import Conflict, JobError
from workers.models import JobStatus, Visibility
from workers.services import job_create, job_delete, job_enqueue

from .build import OUTPUTS
from .imaging import IMAGE_EXTENSIONS
from .lmdb_store import forget
from . import s3
from .credentials import check_endpoint, credential_environment, credential_get, decrypt
from .models import DATASET_KIND, PARAM_FIELDS, Dataset, S3Credential, Source, Task, param_field
from .plugins import DataPlugin, PluginInputError, data_plugin
from .sources import SourceError, is_under, read_class_list
from .spec import BuildSpec
from .uploads import upload_delete, upload_for_build


def resolve_data_folder(folder: str, field: str = "folder") -> Path:
    """Resolve a server folder and check it lies under one of DIGITS_DATA_ROOTS.

    Symlinks and `..` are resolved first, so neither can lead outside the roots."""
    if not folder or "\x00" in folder:
        raise JobError("Give the path of a server folder.", field=field)
    path = Path(folder).expanduser()
    try:
        resolved = path.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise JobError(f"Folder {folder} does not exist on the server.", field=field) from None
    roots = settings.DATA_ROOTS
    if not is_under(resolved, roots):
        allowed = ", ".join(str(r) for r in roots)
        raise JobError(
            f"Folder {folder} is outside the allowed data roots ({allowed}). Ask an admin to add it to DIGITS_DATA_ROOTS.",
            field=field,
        )
    if not resolved.is_dir():
        raise JobError(f"{folder} is not a folder.", field=field)
    return resolved


def check_class_folders(folder: Path) -> list[str]:
    """At least two class subfolders with an image file each. Stops at the first image of
    each class, so a request on a folder of a million files stays quick."""
    classes = []
    try:
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise JobError(f"Cannot read {folder}: {exc.strerror}.", field="folder") from exc
    for sub in subdirs:
        for _dirpath, _dirnames, filenames in os.walk(sub):
            if any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
                classes.append(sub.name)
                break
    if len(classes) < 2:
        found = ", ".join(classes) or "none"
        raise JobError(
            f"{folder} must contain one subfolder of images per class, and at least two classes (found: {found}).",
            field="folder",
        )
    return classes


def resolve_data_file(path: str, field: str) -> Path:
    """A server file (text list, labels file) under one of the data roots."""
    if not path or "\x00" in path:
        raise JobError("Give the path of a server file, or upload one.", field=field)
    try:
        resolved = Path(path).expanduser().resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise JobError(f"File {path} does not exist on the server.", field=field) from None
    if not is_under(resolved, settings.DATA_ROOTS):
        allowed = ", ".join(str(r) for r in settings.DATA_ROOTS)
        raise JobError(f"{path} is outside the allowed data roots ({allowed}).", field=field)
    if not resolved.is_file():
        raise JobError(f"{path} is not a file.", field=field)
    return resolved


LIST_FIELDS = ("train_list", "val_list", "test_list", "labels_file")
# Stored as given, whatever the source (the source's own fields are checked by _check_source).
OPTION_FIELDS = (
    "image_width", "image_height", "image_mode", "resize_mode", "encoding", "jpeg_quality",
    "val_percent", "test_percent", "min_per_class", "max_per_class", "seed",
)


def _candidate(params: dict[str, Any]) -> Dataset:
    """The request as an unsaved Dataset: the model's defaults fill what was left out and
    its validators check each field alone (so a script calling the service directly gets
    the same checks as the form and the API)."""
    unknown = set(params) - set(PARAM_FIELDS)
    if unknown:
        raise JobError(f"Unknown dataset parameters: {', '.join(sorted(unknown))}.")
    candidate = Dataset(**{k: ("" if v is None else v) for k, v in params.items()})
    try:
        candidate.clean_fields(exclude=[f.name for f in Dataset._meta.fields if f.name not in PARAM_FIELDS])
    except ValidationError as exc:
        name, messages = next(iter(exc.message_dict.items()))
        label = param_field(name).verbose_name
        raise JobError(f"{str(label)[:1].upper()}{str(label)[1:]}: {' '.join(messages)}", field=name) from None
    return candidate


def _check_options(p: Dataset) -> None:
    """The rules that involve several fields (the model's validators check each alone)."""
    if not (math.isfinite(p.val_percent) and math.isfinite(p.test_percent)):
        raise JobError("The validation and test percentages must be numbers.", field="val_percent")
    if p.val_percent + p.test_percent >= 100:
        raise JobError("The validation and test percentages must add up to less than 100.", field="val_percent")
    if p.max_per_class and p.min_per_class > p.max_per_class:
        raise JobError("The minimum per class is larger than the maximum.", field="min_per_class")


def _check_segmentation(p: Dataset) -> dict[str, Any]:
    """A folder of images, a folder of label images of the same names, a class list."""
    if p.source != Source.FOLDER:
        raise JobError("A segmentation dataset is made from server folders: choose the folder source.", field="source")
    if p.val_folder or p.test_folder:
        raise JobError(
            "Segmentation takes its validation and test images from the folder by percentage; "
            "leave the separate folders empty.", field="val_folder",
        )
    folder = resolve_data_folder(p.folder)
    if not p.label_folder:
        raise JobError("Give the folder of label images (a PNG per image, of the same name).", field="label_folder")
    label_folder = resolve_data_folder(p.label_folder, field="label_folder")
    if not p.class_list:
        raise JobError("Give the class list: line i names class i, optionally with its colour (`road 128 64 128`).",
                       field="class_list")
    class_list = resolve_data_file(p.class_list, "class_list")
    try:
        read_class_list(class_list)
    except SourceError as exc:
        raise JobError(str(exc), field="class_list") from None
    return {"folder": str(folder), "label_folder": str(label_folder), "class_list": str(class_list)}


def _check_labelled_upload(p: Dataset, upload: str, owner: User) -> dict[str, Any]:
    """A segmentation or detection dataset from an uploaded archive: its layout (images/,
    masks/ or labels/, annotations.json, classes.txt) is checked by the build."""
    out: dict[str, Any] = {"upload": upload_for_build(upload, owner), "class_list": ""}
    if p.class_list:
        path = resolve_data_file(p.class_list, "class_list")
        try:
            read_class_list(path, at_least=2 if p.task == Task.SEGMENTATION else 1)
        except SourceError as exc:
            raise JobError(str(exc), field="class_list") from None
        out["class_list"] = str(path)
    return out


def _check_detection(p: Dataset) -> dict[str, Any]:
    """A folder of images with KITTI label files (a folder of them) or a COCO file, and
    optionally the class list to keep."""
    if p.source != Source.FOLDER:
        raise JobError("A detection dataset is made from server folders: choose the folder source.", field="source")
    if p.val_folder or p.test_folder:
        raise JobError(
            "Detection takes its validation and test images from the folder by percentage; leave the separate folders empty.",
            field="val_folder",
        )
    if bool(p.label_folder) == bool(p.annotations_file):
        raise JobError(
            "Give either the folder of KITTI label files (a .txt per image, of the same name) or a COCO annotations file.",
            field="label_folder",
        )
    out: dict[str, Any] = {"folder": str(resolve_data_folder(p.folder)), "label_folder": "", "annotations_file": "", "class_list": ""}
    if p.label_folder:
        out["label_folder"] = str(resolve_data_folder(p.label_folder, field="label_folder"))
    else:
        out["annotations_file"] = str(resolve_data_file(p.annotations_file, "annotations_file"))
    if p.class_list:
        path = resolve_data_file(p.class_list, "class_list")
        try:
            read_class_list(path, at_least=1)
        except SourceError as exc:
            raise JobError(str(exc), field="class_list") from None
        out["class_list"] = str(path)
    return out


def _check_source(
    p: Dataset, upload: str, owner: User, uploaded: dict[str, UploadedFile], s3_credential: str = "",
    plugin_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the source and return the resolved fields to store."""
    if p.source == Source.PLUGIN:
        return _check_plugin(p, plugin_options or {})
    if p.source == Source.S3 and p.task != Task.CLASSIFICATION:
        raise JobError("An S3 bucket is a source of classification datasets (class subfolders); for segmentation or "
                       "detection, fetch the images to a server folder or upload an archive.", field="source")
    if p.task == Task.SEGMENTATION:
        if p.annotations_file:
            raise JobError("A COCO annotations file is for detection datasets.", field="annotations_file")
        return _check_labelled_upload(p, upload, owner) if p.source == Source.UPLOAD else _check_segmentation(p)
    if p.task == Task.DETECTION:
        return _check_labelled_upload(p, upload, owner) if p.source == Source.UPLOAD else _check_detection(p)
    if p.label_folder or p.class_list or p.annotations_file:
        raise JobError("A labels folder, a class list and an annotations file are for segmentation or detection datasets.",
                       field="label_folder")
    if p.source == Source.FOLDER:
        folder = resolve_data_folder(p.folder)
        check_class_folders(folder)
        out: dict[str, Any] = {"folder": str(folder)}
        for name in ("val_folder", "test_folder"):
            value = getattr(p, name)
            out[name] = str(resolve_data_folder(value, field=name)) if value else ""
        return out
    if p.source == Source.TEXTFILE:
        out = {"shuffle": p.shuffle}
        for name in LIST_FIELDS:
            file = uploaded.get(name)
            if file is not None:
                if file.size > settings.MAX_UPLOAD_LIST_BYTES:
                    raise JobError(f"{file.name} is larger than {settings.MAX_UPLOAD_LIST_BYTES >> 20} MiB.", field=name)
                out[name] = file  # saved into the job folder once the job exists
            elif getattr(p, name):
                out[name] = str(resolve_data_file(getattr(p, name), name))
            else:
                out[name] = ""
        if not out["train_list"]:
            raise JobError("Give a training list (upload it or type its server path).", field="train_list")
        if not out["labels_file"]:
            raise JobError("Give a labels file: one label name per line, line i for label index i.", field="labels_file")
        out["image_folder"] = str(resolve_data_folder(p.image_folder, field="image_folder")) if p.image_folder else ""
        return out
    if p.source == Source.UPLOAD:
        return {"upload": upload_for_build(upload, owner)}
    if p.source == Source.S3:
        return _check_s3(p, owner, s3_credential)
    raise JobError(f"Source must be one of {', '.join(Source.values)}.", field="source")


def plugin_option_values(plugin: type[DataPlugin], given: dict[str, Any]) -> dict[str, Any]:
    """A plugin's options as its fields declare them: each one typed, defaults filled in, a
    path resolved under the data roots; a field error (`plugin_options.NAME`) otherwise."""
    unknown = set(given) - {f.name for f in plugin.fields}
    if unknown:
        raise JobError(f"The {plugin.name} plugin has no option {', '.join(sorted(unknown))}.", field="plugin_options")
    values: dict[str, Any] = {}
    for f in plugin.fields:
        name = f"plugin_options.{f.name}"
        raw = given.get(f.name)
        if raw in (None, ""):
            if f.required and f.default is None:
                raise JobError(f"{f.label}: give a value.", field=name)
            values[f.name] = f.default
            continue
        try:
            if f.kind == "int":
                values[f.name] = int(raw)
            elif f.kind == "float":
                values[f.name] = float(raw)
            elif f.kind == "bool":
                values[f.name] = raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "on", "yes")
            else:
                values[f.name] = str(raw)
        except (TypeError, ValueError):
            raise JobError(f"{f.label}: {raw!r} is not a {'whole number' if f.kind == 'int' else 'number'}.", field=name) from None
        if f.kind == "choice" and values[f.name] not in f.choices:
            raise JobError(f"{f.label}: one of {', '.join(f.choices)}.", field=name)
        if f.kind == "path":
            target = Path(values[f.name])
            resolved = resolve_data_folder(str(target), field=name) if target.is_dir() else resolve_data_file(str(target), name)
            values[f.name] = str(resolved)
    return values


def _check_plugin(p: Dataset, given: dict[str, Any]) -> dict[str, Any]:
    """An installed data plugin, its options checked by their declarations and by the plugin."""
    try:
        plugin = data_plugin(p.plugin)
    except KeyError as exc:
        raise JobError(str(exc.args[0]), field="plugin") from None
    if plugin.task != p.task:
        raise JobError(f"The {plugin.name} plugin makes {plugin.task} datasets: choose that task.", field="task")
    values = plugin_option_values(plugin, given)
    try:
        plugin(values).check()
    except PluginInputError as exc:
        raise JobError(str(exc), field=f"plugin_options.{exc.field}" if exc.field else "plugin_options") from None
    except Exception as exc:  # noqa: BLE001 - the plugin's bug, said with its name rather than a server error
        raise JobError(f"The {plugin.name} plugin failed checking its options: {type(exc).__name__}: {exc}",
                       field="plugin_options") from None
    return {"plugin": plugin.name, "plugin_options": values}


def s3_store(credential: S3Credential) -> s3.Store:
    """The store of a credential, its endpoint checked again (an address may have moved)."""
    try:
        check_endpoint(credential.endpoint_url)
    except JobError as exc:
        raise JobError(str(exc), field="s3_credential") from None
    return s3.Store(
        credential.endpoint_url, credential.access_key_id, decrypt(credential.secret_encrypted), credential.region,
        settings.S3_CONNECT_TIMEOUT, settings.S3_READ_TIMEOUT,
    )


def _check_s3(p: Dataset, owner: User, credential_name: str) -> dict[str, Any]:
    """The bucket can be read with the owner's credential and holds class subfolders under
    each prefix: said now, on the form, rather than when the build runs."""
    if not credential_name:
        raise JobError("Choose the S3 credential to read the bucket with.", field="s3_credential")
    if not p.s3_bucket.strip():
        raise JobError("Give the bucket's name.", field="s3_bucket")
    # One split's objects must not also be under another's prefix (the whole bucket, "",
    # holds every other prefix).
    what = {"s3_prefix": "training", "s3_val_prefix": "validation", "s3_test_prefix": "test"}
    given = [(name, s3.normal_prefix(getattr(p, name))) for name in what if name == "s3_prefix" or getattr(p, name)]
    for i, (first, first_prefix) in enumerate(given):
        for second, second_prefix in given[i + 1 :]:
            if first_prefix.startswith(second_prefix) or second_prefix.startswith(first_prefix):
                raise JobError(
                    f"The {what[second]} prefix ({second_prefix or 'the whole bucket'}) and the {what[first]} prefix "
                    f"({first_prefix or 'the whole bucket'}) overlap: give each split a prefix of its own, e.g. "
                    "shapes/train/ and shapes/val/.", field=second,
                )
    credential = credential_get(owner, credential_name)
    store = s3_store(credential)
    for name in ("s3_prefix", "s3_val_prefix", "s3_test_prefix"):
        prefix = getattr(p, name)
        if name == "s3_prefix" or prefix:
            try:
                s3.check_source(store, p.s3_bucket.strip(), prefix)
            except s3.S3Error as exc:
                fields = {"endpoint": "s3_credential", "credential": "s3_credential", "bucket": "s3_bucket"}
                raise JobError(str(exc), field=fields.get(exc.what, name)) from None
    return {"s3_credential": credential, "s3_bucket": p.s3_bucket.strip(),
            **{name: s3.normal_prefix(getattr(p, name)) for name in ("s3_prefix", "s3_val_prefix", "s3_test_prefix")}}


def dataset_create(
    *,
    owner: User,
    name: str,
    group: str = "",
    notes: str = "",
    upload: str = "",
    uploaded: dict[str, UploadedFile] | None = None,
    visibility: str = Visibility.TEAM,
    s3_credential: str = "",
    plugin_options: dict[str, Any] | None = None,
    **params: Any,
) -> Dataset:
    """Validate a dataset request, store it and queue its build (after commit).

    `params` are Dataset fields named in PARAM_FIELDS; what is left out takes the model's
    default. `upload` is an Upload id (source=upload); `uploaded` holds list files sent
    with the request, by field name; `s3_credential` names one of the owner's S3
    credentials (source=s3); `plugin_options` are the options of the data plugin named by
    `plugin` (source=plugin)."""
    if not name.strip():
        raise JobError("Give the dataset a name.", field="name")
    candidate = _candidate(params)
    _check_options(candidate)
    # Checked before any transaction opens: an S3 source is asked over the network.
    source_fields = _check_source(candidate, upload, owner, uploaded or {}, s3_credential, plugin_options)
    with transaction.atomic():
        return _store_dataset(owner, name, group, notes, visibility, candidate, source_fields)


def _store_dataset(
    owner: User, name: str, group: str, notes: str, visibility: str, candidate: Dataset, source_fields: dict[str, Any],
) -> Dataset:
    """The job, its row and its uploaded lists, in the caller's transaction; queued on commit."""
    job = job_create(kind=DATASET_KIND, name=name.strip(), owner=owner, group=group, notes=notes, visibility=visibility)
    for name in LIST_FIELDS:
        file = source_fields.get(name)
        if isinstance(file, UploadedFile):
            # Keep the person's own file name: the skipped-line report refers to it.
            safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(file.name or "list.txt").name)[:100]
            target = job.directory / "lists" / name / (safe.lstrip(".") or "list.txt")
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                for piece in file.chunks():
                    out.write(piece)
            source_fields[name] = str(target)
    storage.publish(job.directory)  # uploaded lists: read by the build, maybe on another host
    dataset = Dataset.objects.create(
        job=job,
        task=candidate.task,
        source=candidate.source,
        **{field: getattr(candidate, field) for field in OPTION_FIELDS},
        **source_fields,
    )
    job_enqueue(job.pk, from_=[JobStatus.INITIALIZED])
    return dataset


def dataset_clone_params(dataset: Dataset) -> dict[str, Any]:
    """The form's initial values for "Clone": the same parameters, a new name. Lists that
    were uploaded now live in the original's job folder and are offered as server paths
    only when that folder is under a data root; otherwise they must be uploaded again."""
    data = {name: getattr(dataset, name) for name in PARAM_FIELDS}
    data.update(name=f"{dataset.job.name} (clone)", group=dataset.job.group, notes=dataset.job.notes)
    data["upload"] = str(dataset.upload_id or "")
    data["s3_credential"] = dataset.s3_credential.name if dataset.s3_credential else ""
    data["plugin_options"] = dataset.plugin_options
    for name in LIST_FIELDS:
        path = data.get(name) or ""
        if path and not is_under(Path(path), settings.DATA_ROOTS):
            data[name] = ""
    return data


def dataset_build_spec(dataset: Dataset) -> BuildSpec:
    """What the build child is asked to do: the source, the options, where to write."""
    source: dict[str, Any] = {}
    if dataset.source == Source.PLUGIN:
        source = {"plugin": dataset.plugin, "plugin_options": dataset.plugin_options}
    elif dataset.task in (Task.SEGMENTATION, Task.DETECTION) and dataset.source == Source.UPLOAD:
        if dataset.upload is None or not dataset.upload.path.exists():
            raise JobError("The uploaded archive of this dataset was deleted; upload it again in a new dataset.")
        source = {"archive": str(dataset.upload.path), "max_extract_bytes": settings.MAX_ARCHIVE_EXTRACT_BYTES,
                  "class_list": dataset.class_list}
    elif dataset.task in (Task.SEGMENTATION, Task.DETECTION):
        source = {"folder": dataset.folder, "label_folder": dataset.label_folder, "class_list": dataset.class_list,
                  "annotations_file": dataset.annotations_file}
    elif dataset.source == Source.FOLDER:
        source = {"folder": dataset.folder, "val_folder": dataset.val_folder, "test_folder": dataset.test_folder}
    elif dataset.source == Source.TEXTFILE:
        source = {name: getattr(dataset, name) for name in (*LIST_FIELDS, "image_folder", "shuffle")}
    elif dataset.source == Source.S3:
        credential = dataset.s3_credential
        if credential is None:
            raise JobError("The S3 credential of this dataset was deleted; add it again and make a new dataset.")
        check_endpoint(credential.endpoint_url)
        source = {"s3_endpoint": credential.endpoint_url, "s3_region": credential.region, "s3_bucket": dataset.s3_bucket,
                  "s3_prefix": dataset.s3_prefix, "s3_val_prefix": dataset.s3_val_prefix,
                  "s3_test_prefix": dataset.s3_test_prefix, "s3_connect_timeout": settings.S3_CONNECT_TIMEOUT,
                  "s3_read_timeout": settings.S3_READ_TIMEOUT, "max_extract_bytes": settings.MAX_ARCHIVE_EXTRACT_BYTES}
    else:
        if dataset.upload is None or not dataset.upload.path.exists():
            raise JobError("The uploaded archive of this dataset was deleted; upload it again in a new dataset.")
        source = {"archive": str(dataset.upload.path), "max_extract_bytes": settings.MAX_ARCHIVE_EXTRACT_BYTES}
    return BuildSpec(
        task=dataset.task,
        source=dataset.source,
        output_dir=str(dataset.directory),
        width=dataset.image_width,
        height=dataset.image_height,
        channels=dataset.channels,
        resize_mode=dataset.resize_mode,
        encoding=dataset.encoding,
        jpeg_quality=dataset.jpeg_quality,
        val_percent=dataset.val_percent,
        test_percent=dataset.test_percent,
        min_per_class=dataset.min_per_class,
        max_per_class=dataset.max_per_class,
        seed=dataset.seed,
        data_roots=[str(r) for r in settings.DATA_ROOTS],
        **source,
    )


def dataset_build_environment(dataset: Dataset) -> dict[str, str]:
    """The build child's secrets: an S3 source's keys (in its environment, never its spec)."""
    if dataset.source == Source.S3 and dataset.s3_credential is not None:
        return credential_environment(dataset.s3_credential)
    return {}


def dataset_store_result(dataset: Dataset, result: dict[str, Any]) -> None:
    dataset.labels = result["labels"]
    dataset.counts = result["counts"]
    dataset.class_counts = result["class_counts"]
    dataset.skipped = result["skipped"]
    dataset.mean_pixel = result["mean_pixel"]
    dataset.dropped_classes = result.get("dropped_classes", [])
    dataset.build_seconds = result.get("seconds")
    dataset.checksums = result.get("checksums", {})
    dataset.label_colours = result.get("label_colours", [])
    dataset.ignored_pixels = result.get("ignored_pixels", {})
    dataset.save(
        update_fields=["labels", "counts", "class_counts", "skipped", "mean_pixel", "dropped_classes", "build_seconds",
                       "checksums", "label_colours", "ignored_pixels"]
    )


def dataset_remove_partial(dataset: Dataset) -> None:
    """After a failed or aborted build: nothing half-written stays, on disk or on the row."""
    for split in ("train", "val", "test"):
        forget(dataset.split_path(split))  # a cached LMDB environment must not outlive its folder
    Dataset.objects.filter(pk=dataset.pk).update(labels=[], counts={}, class_counts={}, mean_pixel=[])
    shutil.rmtree(dataset.directory / "build.tmp", ignore_errors=True)
    for name in OUTPUTS:
        path = dataset.directory / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def dataset_delete(dataset: Dataset) -> None:
    """Delete a dataset (its job: the kind's `dataset_before_delete` runs first)."""
    job_delete(dataset.job)


def dataset_before_delete(dataset: Dataset) -> None:
    """Refuse while models use it; forget its open databases; its uploaded archive goes
    with it when no other dataset was built from it (a clone shares it)."""
    users = list(dataset.models.select_related("job").values_list("job__name", flat=True)[:5])
    if users:
        raise Conflict(
            f"This dataset is used by model(s) {', '.join(users)}. Delete those models first, then the dataset."
        )
    for split in ("train", "val", "test"):
        forget(dataset.split_path(split))
    upload = dataset.upload
    if upload is not None and not upload.datasets.exclude(pk=dataset.pk).exists():
        upload_delete(upload)
