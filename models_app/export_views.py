"""Export pages: start an export of a snapshot from the model's page, and delete one. The
checks are shown on the model page (its "Export and verify" table)."""
from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from workers.errors import JobError
from workers.permissions import check_modify, current_user
from workers.services import job_delete

from .exports import export_create, export_list
from .forms import ExportForm
from .selectors import model_list


@require_POST
def export_new(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(model_list(), pk=pk)
    form = ExportForm(request.POST, epochs=list(model.snapshots.values_list("epoch", flat=True)))
    if not form.is_valid():
        messages.error(request, "Not exported: " + "; ".join(str(e) for errs in form.errors.values() for e in errs))
        return redirect("model_detail", pk=pk)
    try:
        export_create(owner=current_user(request.user), model=model, **form.cleaned_data)
    except JobError as exc:
        messages.error(request, f"Not exported: {exc}")
    else:
        messages.success(request, "Exporting: ONNX and torch.export, each checked against PyTorch. The table below fills in when it is done.")
    return redirect(reverse("model_detail", args=[pk]) + "#exports")


@require_POST
def export_remove(request: HttpRequest, pk: int) -> HttpResponse:
    export = get_object_or_404(export_list(), pk=pk)
    check_modify(request.user, export)
    model_id = export.model_id
    job_delete(export.job)
    messages.success(request, "Export deleted.")
    return redirect("model_detail", pk=model_id)
