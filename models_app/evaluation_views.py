"""Evaluation pages: start one from a model's page, and its report (metrics, confusion
matrix whose cells open their images, per-class table, mistakes, suspect labels, top-N
per class, calibration), over the same services as the API."""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from workers.errors import JobError
from workers.listing import pick_list
from workers.permissions import can_modify, can_view, check_modify, current_user, visible_q
from workers.services import job_abort, job_delete

from .evaluation_api import evaluation_image, image_url
from .evaluations import (
    evaluation_compare,
    evaluation_create,
    evaluation_images,
    evaluation_list,
    evaluation_predictions,
    image_names,
)
from .forms import EvaluateForm
from .models import Evaluation
from .selectors import model_list
from .spatial_results import is_spatial, spatial_images


@require_POST
def evaluation_new(request: HttpRequest, pk: int) -> HttpResponse:
    model = get_object_or_404(model_list(), pk=pk)
    form = EvaluateForm(
        request.POST, request.FILES, epochs=list(model.snapshots.values_list("epoch", flat=True)), splits=model.dataset.splits,
        task=model.dataset.task,
    )
    if not form.is_valid():
        messages.error(request, "Not evaluated: " + "; ".join(str(e) for errs in form.errors.values() for e in errs))
        return redirect("model_detail", pk=pk)
    try:
        evaluation = evaluation_create(owner=current_user(request.user), model=model, **form.service_args())
    except JobError as exc:
        messages.error(request, f"Not evaluated: {exc}")
        return redirect("model_detail", pk=pk)
    return redirect("evaluation_detail", pk=evaluation.pk)


def _view_args(request: HttpRequest) -> dict[str, int | str | None]:
    def number(name: str) -> int | None:
        raw = request.GET.get(name, "")
        return int(raw) if raw.lstrip("-").isdecimal() else None

    return {"view": request.GET.get("view", ""), "label": number("label"), "predicted": number("predicted"),
            "page": number("page") or 1}


def evaluation_detail(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = get_object_or_404(evaluation_list().prefetch_related("job__events"), pk=pk)
    context: dict[str, object] = {"evaluation": evaluation, "job": evaluation.job, "can_modify": can_modify(request.user, evaluation)}
    metrics = evaluation.metrics
    if metrics and is_spatial(evaluation):
        context.update(_spatial_context(request, evaluation))
    elif metrics:
        labels = evaluation.labels
        matrix = metrics["confusion"]
        per = metrics["per_class"]
        context["matrix_rows"] = [
            (i, labels[i], [(j, count, count / max(1, sum(row))) for j, count in enumerate(row)]) for i, row in enumerate(matrix)
        ]
        context["class_rows"] = [
            (i, labels[i], per["precision"][i], per["recall"][i], per["f1"][i], per["support"][i]) for i in range(len(labels))
        ]
        args = _view_args(request)
        if not args["view"]:  # without ground truth there are no mistakes to show first
            args["view"] = "mistakes" if metrics.get("top1") is not None else "all"
        try:
            page = evaluation_images(evaluation, per_page=48, **args)  # type: ignore[arg-type]
        except JobError as exc:
            messages.error(request, str(exc))
            page = evaluation_images(evaluation, view="all", per_page=48)
        for row in page["images"]:
            row["image_url"] = image_url(evaluation, row["index"], api=False)
        context["page"] = page
        suspects = metrics.get("suspects", [])[:48]
        suspect_paths = image_names(evaluation, evaluation_predictions(evaluation), [s["position"] for s in suspects])
        context["suspects"] = [
            {**s, "label_name": labels[s["label"]], "suggested_name": labels[s["suggested"]], "path": path,
             "image_url": image_url(evaluation, s["position"], api=False)}
            for s, path in zip(suspects, suspect_paths)
        ]
        context["labels"] = list(enumerate(labels))
        context["label_names"] = labels
        context["calibration"] = metrics["calibration"]
    return render(request, "models/evaluation.html", context)


def _spatial_context(request: HttpRequest, evaluation: Evaluation) -> dict[str, object]:
    """A segmentation or detection evaluation: the per-class table and chart, and its
    images worst first, each with the prediction and the ground truth drawn."""
    metrics, labels = evaluation.metrics, evaluation.labels
    page: dict[str, Any] | None = None
    if can_view(request.user, evaluation.model.dataset_id):  # its images are the dataset's
        page_number = request.GET.get("page", "")
        view = request.GET.get("view", "worst")
        try:
            page = spatial_images(evaluation, view=view, page=int(page_number) if page_number.isdecimal() else 1, per_page=24)
        except JobError as exc:
            messages.error(request, str(exc))
            page = spatial_images(evaluation, per_page=24)
        for row in page["images"]:
            row["image_url"] = image_url(evaluation, row["index"], api=False, show="prediction")
            row["truth_url"] = image_url(evaluation, row["index"], api=False, show="truth")
    rows: list[tuple[object, ...]]
    if metrics["task"] == "segmentation":
        rows = [(name, metrics["iou"][i], metrics["pixels"][i]) for i, name in enumerate(labels)]
        chart = {"labels": labels, "series": [{"label": "IoU", "values": metrics["iou"]}]}
    else:
        rows = [(name, metrics["ap50"][i], metrics["ap"][i], metrics["objects"][i]) for i, name in enumerate(labels)]
        chart = {"labels": labels, "series": [{"label": "AP@0.5", "values": metrics["ap50"]},
                                              {"label": "AP@0.5:0.95", "values": metrics["ap"]}]}
    legend = list(zip(labels, evaluation.model.dataset.label_colours)) if metrics["task"] == "segmentation" else []
    return {"page": page, "class_rows": rows, "class_chart": chart, "label_names": labels, "legend": legend}


def evaluation_image_view(request: HttpRequest, pk: int, index: int) -> HttpResponse:
    evaluation = get_object_or_404(evaluation_list(), pk=pk)
    try:
        data = evaluation_image(evaluation, index, request.GET.get("show", ""), request.user)
    except JobError as exc:
        raise Http404(str(exc)) from None
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "private, max-age=3600"
    return response


@require_POST
def evaluation_abort(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = get_object_or_404(evaluation_list(), pk=pk)
    check_modify(request.user, evaluation)
    try:
        job_abort(evaluation.job)
    except JobError as exc:
        messages.error(request, str(exc))
    return redirect("evaluation_detail", pk=pk)


@require_POST
def evaluation_remove(request: HttpRequest, pk: int) -> HttpResponse:
    evaluation = get_object_or_404(evaluation_list(), pk=pk)
    check_modify(request.user, evaluation)
    model_id = evaluation.model_id
    job_delete(evaluation.job)
    messages.success(request, "Evaluation deleted.")
    return redirect("model_detail", pk=model_id)


COMPARE_CHOICES = 200


def evaluation_compare_view(request: HttpRequest) -> HttpResponse:
    """`?a=ID&b=ID`: two evaluations side by side; without them, a form to pick them."""
    visible = evaluation_list().filter(visible_q(request.user, "job__"), visible_q(request.user, "model__job__"))
    a, b = (int(raw) if (raw := request.GET.get(side, "")).isdecimal() else None for side in "ab")
    # The newest finished evaluations to pick from, and those asked for (a model page's
    # "compare…" link names one that may be older).
    done = visible.filter(job__status="done").order_by("-job__created_at", "-pk")
    choices, more = pick_list(done, COMPARE_CHOICES, [a, b])
    context: dict[str, object] = {"choices": choices, "choices_more": more, "chosen": {"a": a, "b": b}}
    if a is not None and b is not None:
        first = get_object_or_404(visible, pk=a)
        second = get_object_or_404(visible, pk=b)
        try:
            comparison = evaluation_compare(first, second)
        except JobError as exc:
            messages.error(request, str(exc))
        else:
            labels = comparison["labels"]
            context.update(
                first=first, second=second, comparison=comparison,
                delta_rows=[(labels[i], row) for i, row in enumerate(comparison["confusion_delta"])],
            )
    return render(request, "models/evaluation_compare.html", context)
