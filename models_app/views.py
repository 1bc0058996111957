"""Model pages: thin views over the same services as the API."""
from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from workers.services import JobError, job_abort

from .forms import ClassifyForm, ModelForm
from .selectors import model_list, model_metrics
from .services import model_classify_upload, model_create, model_delete


def model_new(request: HttpRequest) -> HttpResponse:
    initial = {"dataset": request.GET.get("dataset")} if request.GET.get("dataset") else None
    form = ModelForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            model = model_create(owner=request.user, **form.cleaned_data)
        except JobError as exc:
            form.add_error(exc.field, str(exc))
        else:
            return redirect("model_detail", pk=model.pk)
    return render(request, "models/new.html", {"form": form})


def model_detail(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(model_list().prefetch_related("job__events", "snapshots"), pk=pk)
    snapshots = list(model.snapshots.all())
    return render(
        request,
        "models/detail.html",
        {
            "model": model,
            "job": model.job,
            "snapshots": snapshots,
            "metrics": model_metrics(model),
            "classify_form": ClassifyForm(epochs=[s.epoch for s in snapshots]),
            "can_modify": model.job.can_modify(request.user),
        },
    )


@require_POST
def model_classify(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(model_list(), pk=pk)
    epochs = list(model.snapshots.values_list("epoch", flat=True))
    form = ClassifyForm(request.POST, request.FILES, epochs=epochs)
    context: dict[str, object] = {"model": model, "form": form}
    if form.is_valid():
        try:
            context["snapshot"], context["predictions"] = model_classify_upload(
                model, form.cleaned_data["epoch"], form.cleaned_data["image"]
            )
        except JobError as exc:
            form.add_error(None, str(exc))
    return render(request, "models/classify.html", context)


@require_POST
def model_abort(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(model_list(), pk=pk)
    if not model.job.can_modify(request.user):
        raise PermissionDenied
    try:
        job_abort(model.job)
    except JobError as exc:
        messages.error(request, str(exc))
    return redirect("model_detail", pk=pk)


@require_POST
def model_remove(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(model_list(), pk=pk)
    if not model.job.can_modify(request.user):
        raise PermissionDenied
    model_delete(model)
    messages.success(request, f"Model {model.job.name} deleted.")
    return redirect("home")
