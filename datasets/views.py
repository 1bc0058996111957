"""Dataset pages: thin views over the same services as the API."""
from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from workers import storage
from workers.errors import JobError
from workers.models import JobStatus, Visibility
from workers.permissions import can_modify, check_modify, current_user, visible_q
from workers.services import job_abort, job_update

from .filters import DatasetFilter
from .credentials import credential_create, credential_delete, credential_list
from .forms import RESIZE_HELP, DatasetEditForm, DatasetForm, S3CredentialForm
from .models import Dataset, ImageMode, Source
from .preview import first_image_in_folder, first_image_in_upload, resize_preview
from .selectors import data_folders, dataset_gallery, dataset_image, dataset_label_view, dataset_list
from .services import dataset_clone_params, dataset_create, dataset_delete, resolve_data_folder
from .uploads import upload_get


def dataset_list_view(request: HttpRequest) -> HttpResponse:
    """Every dataset, a page at a time: search, filters, sorting, bulk actions."""
    visible = dataset_list().filter(visible_q(request.user, "job__"))
    filters = DatasetFilter(request.GET or None, queryset=visible)
    rows = filters.qs if filters.is_bound and filters.is_valid() else visible
    page = Paginator(rows, 50).get_page(request.GET.get("page"))
    return render(request, "datasets/list.html", {"filters": filters, "page": page, "statuses": JobStatus.choices,
                                                   "sources": Source.choices})


def _modifiable(request: HttpRequest, pk: int) -> Dataset:
    dataset = get_object_or_404(dataset_list(), pk=pk)
    check_modify(request.user, dataset)
    return dataset


def dataset_new(request: HttpRequest) -> HttpResponse:
    initial = {}
    clone_of = request.GET.get("clone")
    if clone_of and clone_of.isdecimal():
        initial = dataset_clone_params(get_object_or_404(dataset_list().filter(visible_q(request.user, "job__")), pk=int(clone_of)))
        # The plugin's options go to its own fields on the form.
        for key, value in (initial.pop("plugin_options", None) or {}).items():
            initial[f"plugin_options__{initial.get('plugin')}__{key}"] = value
    credentials = list(credential_list(current_user(request.user)).values_list("name", flat=True))
    form = DatasetForm(request.POST or None, request.FILES or None, initial=initial, credentials=credentials)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            dataset = dataset_create(
                owner=current_user(request.user), name=data["name"], group=data["group"], notes=data["notes"],
                visibility=data["visibility"] or Visibility.TEAM, upload=data["upload"], uploaded=form.uploaded_lists(), **form.params(),
            )
        except JobError as exc:
            field = exc.field or ""
            if field.startswith("plugin_options."):  # the chosen plugin's own field
                field = f"plugin_options__{data['plugin']}__{field.split('.', 1)[1]}"
            form.add_error(field if field in form.fields else None, str(exc))
        else:
            return redirect("dataset_detail", pk=dataset.pk)
    return render(
        request,
        "datasets/new.html",
        {"form": form, "clone_of": clone_of, "resize_help": {str(k): v for k, v in RESIZE_HELP.items()}, "data_folders": data_folders()},
    )


def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(dataset_list().prefetch_related("job__events"), pk=pk)
    modifiable = can_modify(request.user, dataset)
    models = dataset.models.filter(visible_q(request.user, "job__")).select_related("job").order_by("-job__created_at")
    edit_form = DatasetEditForm(initial={"name": dataset.job.name, "group": dataset.job.group, "notes": dataset.job.notes,
                                         "visibility": dataset.job.visibility})
    return render(
        request,
        "datasets/detail.html",
        {
            "dataset": dataset,
            "job": dataset.job,
            "can_modify": modifiable,
            "edit_form": edit_form if modifiable else None,
            # The newest; the models list, filtered by this dataset, has them all.
            "models": models[:20],
            "models_total": models.count(),
        },
    )


@require_POST
def dataset_edit(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _modifiable(request, pk)
    form = DatasetEditForm(request.POST)
    if form.is_valid():
        job_update(dataset.job, **{**form.cleaned_data, "visibility": form.cleaned_data["visibility"] or None})
        messages.success(request, "Saved.")
    else:
        messages.error(request, "Not saved: " + "; ".join(str(e) for errs in form.errors.values() for e in errs))
    return redirect("dataset_detail", pk=pk)


SHOW_WORDS = {"overlay": "labels over the image", "labels": "labels", "image": "image alone", "boxes": "boxes on the image"}


def dataset_explore(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(dataset_list(), pk=pk)
    split = request.GET.get("split", "train")
    label_arg = request.GET.get("label", "")
    label = int(label_arg) if label_arg.isdecimal() and int(label_arg) < len(dataset.labels) else None
    page_arg = request.GET.get("page", "1")
    page = dataset_gallery(dataset, split, label=label, page=int(page_arg) if page_arg.isdecimal() else 1)
    items = [(i, dataset.labels[lab]) for i, lab in zip(page.indices, page.labels)]
    # Segmentation: each image with its labels over it (or the labels, or the image alone).
    # Detection: each image with its boxes (or the image alone).
    choices = {"segmentation": ("overlay", "labels", "image"), "detection": ("boxes", "image")}.get(dataset.task, ())
    show = request.GET.get("show", "")
    show = show if show in choices else (choices[0] if choices else "image")
    legend = list(zip(dataset.labels, dataset.label_colours)) if dataset.is_segmentation else []
    return render(request, "datasets/explore.html", {
        "dataset": dataset, "job": dataset.job, "page": page, "items": items, "show": show, "legend": legend,
        "show_choices": [(c, SHOW_WORDS[c]) for c in choices],
    })


def dataset_image_view(request: HttpRequest, pk: int, split: str, index: int) -> HttpResponse:
    dataset = get_object_or_404(dataset_list(), pk=pk)
    show = request.GET.get("show", "image")
    if show != "image":  # a segmentation dataset's labels, alone or over the image
        data, content_type = dataset_label_view(dataset, split, index, show), "image/png"
    else:
        data, content_type, _label = dataset_image(dataset, split, index)
    response = HttpResponse(data, content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    return response


def dataset_mean_image(request: HttpRequest, pk: int) -> FileResponse:
    dataset = get_object_or_404(dataset_list(), pk=pk)
    path = storage.fetch(dataset.directory / "mean.png") if dataset.job.status == JobStatus.DONE else dataset.directory / "mean.png"
    if not path.exists():
        raise Http404("No mean image yet.")
    return FileResponse(path.open("rb"), content_type="image/png")


@require_GET
def dataset_preview(request: HttpRequest) -> JsonResponse:
    """The form's live preview: the source's first image, resized by every mode."""
    try:
        width = int(request.GET.get("width", 28))
        height = int(request.GET.get("height", 28))
    except ValueError:
        return JsonResponse({"error": "Width and height must be whole numbers."}, status=400)
    channels = 1 if request.GET.get("image_mode") == ImageMode.GRAYSCALE else 3
    try:
        if request.GET.get("source") == Source.UPLOAD:
            upload = upload_get(request.GET.get("upload", ""), request.user)
            name, data = first_image_in_upload(upload)
            result = resize_preview(data, name, width, height, channels)
        else:
            folder = request.GET.get("folder") or request.GET.get("image_folder", "")
            folder_path = resolve_data_folder(folder)
            image = first_image_in_folder(folder_path, class_folders=request.GET.get("source") != Source.TEXTFILE)
            result = resize_preview(image, str(image.relative_to(folder_path)), width, height, channels)
    except JobError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    return JsonResponse(result)


@require_POST
def dataset_abort(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _modifiable(request, pk)
    try:
        job_abort(dataset.job)
    except JobError as exc:
        messages.error(request, str(exc))
    return redirect("dataset_detail", pk=pk)


@require_POST
def dataset_remove(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _modifiable(request, pk)
    try:
        dataset_delete(dataset)
    except JobError as exc:
        messages.error(request, str(exc))
        return redirect("dataset_detail", pk=pk)
    messages.success(request, f"Dataset {dataset.job.name} deleted.")
    return redirect("home")


def s3_credentials(request: HttpRequest) -> HttpResponse:
    """Your S3 credentials: add one (its secret is stored encrypted and never shown again),
    see them, delete them."""
    user = current_user(request.user)
    form = S3CredentialForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            credential = credential_create(owner=user, **form.cleaned_data)
        except JobError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            messages.success(request, f"Credential {credential.name!r} added; its secret key is stored encrypted.")
            return redirect("s3_credentials")
    return render(request, "datasets/s3_credentials.html", {"form": form, "credentials": credential_list(user)})


@require_POST
def s3_credential_delete(request: HttpRequest, pk: int) -> HttpResponse:
    credential = get_object_or_404(credential_list(current_user(request.user)), pk=pk)
    credential_delete(credential)
    messages.success(request, f"Credential {credential.name!r} deleted.")
    return redirect("s3_credentials")
