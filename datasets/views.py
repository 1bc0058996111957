"""Dataset pages: thin views over the same services as the API."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from workers.services import JobError, job_abort

from .forms import DatasetForm
from .selectors import dataset_list
from .services import dataset_create, dataset_delete


def dataset_new(request: HttpRequest) -> HttpResponse:
    form = DatasetForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            dataset = dataset_create(owner=request.user, **form.cleaned_data)
        except JobError as exc:
            form.add_error(exc.field, str(exc))
        else:
            return redirect("dataset_detail", pk=dataset.pk)
    return render(request, "datasets/new.html", {"form": form})


def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(dataset_list().prefetch_related("job__events"), pk=pk)
    return render(
        request,
        "datasets/detail.html",
        {"dataset": dataset, "job": dataset.job, "can_modify": dataset.job.can_modify(request.user)},
    )


def dataset_mean_image(request: HttpRequest, pk: int) -> FileResponse:
    dataset = get_object_or_404(dataset_list(), pk=pk)
    path = dataset.directory / "mean.png"
    if not path.exists():
        raise Http404("No mean image yet.")
    return FileResponse(path.open("rb"), content_type="image/png")


@require_POST
def dataset_abort(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(dataset_list(), pk=pk)
    if not dataset.job.can_modify(request.user):
        raise PermissionDenied
    try:
        job_abort(dataset.job)
    except JobError as exc:
        messages.error(request, str(exc))
    return redirect("dataset_detail", pk=pk)


@require_POST
def dataset_remove(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = get_object_or_404(dataset_list(), pk=pk)
    if not dataset.job.can_modify(request.user):
        raise PermissionDenied
    try:
        dataset_delete(dataset)
    except JobError as exc:
        messages.error(request, str(exc))
        return redirect("dataset_detail", pk=pk)
    messages.success(request, f"Dataset {dataset.job.name} deleted.")
    return redirect("home")
