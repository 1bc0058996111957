"""Model pages: thin views over the same services as the API."""
from __future__ import annotations

import json

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from datasets.selectors import dataset_names
from workers.models import JobStatus, Priority, Visibility
from workers.scheduler import wait_reason
from workers.selectors import job_devices
from workers.errors import JobError
from workers.listing import pick_list
from workers.permissions import can_modify, check_modify, current_user, visible_q
from workers.services import job_abort, job_update, placement_check

from .compare import model_compare, parse_ids
from .evaluations import evaluation_list
from .exports import export_list, export_rows
from .forms import ClassifyForm, EvaluateForm, ExportForm, ImportForm, ModelForm
from .filters import ModelFilter
from .importing import model_import
from .models import Network, TrainedModel
from .selectors import model_list
from .sweeps import sweep_create
from .services import model_rerun_exactly, can_submit_code, model_classify_upload, model_clone_params, model_create, model_delete, model_resume


def model_new(request: HttpRequest) -> HttpResponse:
    initial: dict = {}
    clone_of = request.GET.get("clone")
    if clone_of and clone_of.isdecimal():
        initial = model_clone_params(get_object_or_404(model_list().filter(visible_q(request.user, "job__")), pk=int(clone_of)))
        initial["priority"] = Priority[initial["priority"].upper()]
        initial["placement"] = "specific" if initial["device_ids"] else ("count" if initial["devices"] > 1 else "next")
    elif request.GET.get("dataset"):
        initial = {"dataset": request.GET.get("dataset")}
    if request.GET.get("base_model", "").isdecimal():  # "Fine-tune" from a model's page
        initial.update(base_model=int(request.GET["base_model"]), base_epoch=request.GET.get("base_epoch") or None)
    form = ModelForm(request.POST or None, initial=initial, user=request.user)
    if request.method == "POST" and form.is_valid():
        params, requested = form.split()
        params["visibility"] = params.get("visibility") or Visibility.TEAM
        sweep = form.sweep()
        try:
            user = current_user(request.user)
            placement = placement_check(user, **requested)
            if sweep is not None:  # many models: the options in the sweep box vary, the rest are shared
                job = {k: params.pop(k) for k in ("name", "group", "notes", "dataset")}
                base = {k: v for k, v in params.items() if k not in sweep["space"] and not (k == "base_model" and v is None)}
                if base.get("base_model") is not None:
                    base["base_model"] = base["base_model"].pk
                created = sweep_create(owner=user, name=job["name"], dataset=job["dataset"], group=job["group"],
                                       base=base, placement=placement, **sweep)
                return redirect("sweep_detail", pk=created.pk)
            model = model_create(owner=user, placement=placement, **params)
        except JobError as exc:
            field = exc.field if exc.field in form.fields else "sweep_space" if exc.field == "space" and sweep else None
            form.add_error(field, str(exc))
        else:
            return redirect("model_detail", pk=model.pk)
    return render(
        request, "models/new.html", {"form": form, "clone_of": clone_of, "can_submit_code": can_submit_code(request.user)}
    )


LIST_PAGE_SIZE = 50
DATASET_CHOICES = 500  # in the models list's dataset filter


def model_list_view(request: HttpRequest) -> HttpResponse:
    """Every model, a page at a time: search, filters, sorting by any column (best
    validation accuracy, duration, ...), bulk actions and "compare selected"."""
    visible = model_list().filter(visible_q(request.user, "job__"))
    filters = ModelFilter(request.GET or None, queryset=visible)
    rows = filters.qs if filters.is_bound and filters.is_valid() else visible
    page = Paginator(rows, LIST_PAGE_SIZE).get_page(request.GET.get("page"))
    # The dataset filter offers the newest datasets (and the one chosen); any other is
    # reached from its own page ("all its models"), which links here with ?dataset=.
    chosen = request.GET.get("dataset", "")
    datasets, datasets_more = pick_list(
        dataset_names().filter(visible_q(request.user, "job__")),
        DATASET_CHOICES, [int(chosen) if chosen.isdecimal() else None],
    )
    return render(request, "models/list.html", {
        "filters": filters, "page": page, "networks": Network.choices, "statuses": JobStatus.choices,
        "datasets": datasets, "datasets_more": datasets_more,
    })


def model_compare_view(request: HttpRequest) -> HttpResponse:
    """`?ids=1,2,3`: the runs' curves overlaid, their parameters side by side."""
    try:
        comparison = model_compare(parse_ids(request.GET.get("ids", "")), request.user)
    except JobError as exc:
        messages.error(request, str(exc))
        return redirect("model_list")
    return render(request, "models/compare.html", {"comparison": comparison})


def model_import_view(request: HttpRequest) -> HttpResponse:
    """Import a model trained elsewhere; a refused upload re-shows the form with the reason."""
    form = ImportForm(request.POST or None, request.FILES or None, initial={"dataset": request.GET.get("dataset")}, user=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            model = model_import(owner=current_user(request.user), **{**form.cleaned_data, "visibility": form.cleaned_data["visibility"] or Visibility.TEAM})
        except JobError as exc:
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        else:
            messages.success(request, f"Imported {model.job.name}: classify, evaluate, export or fine-tune it below.")
            return redirect("model_detail", pk=model.pk)
    return render(request, "models/import.html", {"form": form})


def model_detail(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(model_list().prefetch_related("job__events", "snapshots"), pk=pk)
    snapshots = list(model.snapshots.all())
    # ?epoch=E (a snapshot row's "Classify" and "Evaluate"): that snapshot preselected.
    try:
        requested = float(request.GET.get("epoch", ""))
    except ValueError:
        requested = None
    chosen = next((s.epoch for s in snapshots if requested is not None and abs(s.epoch - requested) < 5e-5), None)
    # The newest evaluations and exports; the page says how many there are, the API lists all.
    evaluations = evaluation_list().filter(visible_q(request.user, "job__"), model=model).order_by("-job__created_at", "-pk")
    exports = export_list().filter(visible_q(request.user, "job__"), model=model).order_by("-job__created_at", "-pk")
    return render(
        request,
        "models/detail.html",
        {
            "model": model,
            "job": model.job,
            "snapshots": snapshots,
            "classify_form": ClassifyForm(epochs=[s.epoch for s in snapshots], initial={"epoch": chosen}),
            "evaluate_form": EvaluateForm(
                epochs=[s.epoch for s in snapshots], splits=model.dataset.splits, task=model.dataset.task, initial={"epoch": chosen}
            ),
            # Top-5 says nothing with 5 classes or fewer (it is always 100 %), nor per pixel.
            "show_top5": model.dataset.num_classes > 5 and model.dataset.task == "classification",
            # Segmentation charts name and colour each class's IoU.
            "class_names_json": json.dumps(model.dataset.labels),
            "class_colours_json": json.dumps(model.dataset.label_colours),
            "best_snapshot": max((s for s in snapshots if s.val_accuracy is not None), key=lambda s: s.val_accuracy or 0.0, default=None),
            "evaluations": evaluations[:20],
            "evaluations_total": evaluations.count(),
            "export_form": ExportForm(epochs=[s.epoch for s in snapshots]),
            "exports": [(export, export_rows(export)) for export in exports[:10]],
            "exports_total": exports.count(),
            "can_modify": can_modify(request.user, model),
            "visibilities": Visibility.choices,
            "queue": wait_reason(model.job),
            "placed": job_devices(model.job),
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
            context["result"] = model_classify_upload(
                model, form.cleaned_data["epoch"], form.cleaned_data["image"], views=form.cleaned_data["views"]
            )
        except JobError as exc:
            # The form again, with the message: never a dead end.
            form.add_error(exc.field if exc.field in form.fields else None, str(exc))
    return render(request, "models/classify.html", context)


def _modifiable(request: HttpRequest, pk: int) -> TrainedModel:
    model = get_object_or_404(model_list(), pk=pk)
    check_modify(request.user, model)
    return model


@require_POST
def model_rerun(request: HttpRequest, pk: int) -> HttpResponse:
    """A new run with exactly this one's parameters, seed, dataset and placement."""
    model = get_object_or_404(model_list(), pk=pk)
    try:
        rerun = model_rerun_exactly(current_user(request.user), model)
    except JobError as exc:
        messages.error(request, f"Not rerun: {exc}")
        return redirect("model_detail", pk=pk)
    messages.success(request, f"Rerunning {model.job.name} with the same parameters, seed and data.")
    return redirect("model_detail", pk=rerun.pk)


@require_POST
def model_abort(request: HttpRequest, pk: int) -> HttpResponse:
    model = _modifiable(request, pk)
    try:
        job_abort(model.job)
    except JobError as exc:
        messages.error(request, str(exc))
    return redirect("model_detail", pk=pk)


@require_POST
def model_resume_view(request: HttpRequest, pk: int) -> HttpResponse:
    model = _modifiable(request, pk)
    try:
        snapshot = model_resume(model)
    except JobError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Resuming from the snapshot at epoch {snapshot.epoch:g}.")
    return redirect("model_detail", pk=pk)


@require_POST
def model_edit(request: HttpRequest, pk: int) -> HttpResponse:
    model = _modifiable(request, pk)
    try:
        job_update(model.job, name=request.POST.get("name"), group=request.POST.get("group"), notes=request.POST.get("notes"),
                   visibility=request.POST.get("visibility") or None)
    except JobError as exc:
        messages.error(request, f"Not saved: {exc}")
    else:
        messages.success(request, "Saved.")
    return redirect("model_detail", pk=pk)


@require_POST
def model_remove(request: HttpRequest, pk: int) -> HttpResponse:
    model = _modifiable(request, pk)
    model_delete(model)
    messages.success(request, f"Model {model.job.name} deleted.")
    return redirect("home")
