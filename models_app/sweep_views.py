"""Sweep pages: the list, one sweep (trials sortable by the metric, the best marked, a
parallel-coordinates plot of parameters against the metric, the trials' curves overlaid),
abort. Sweeps are started from the model form's "Sweep" section."""
from __future__ import annotations

import json

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from workers.errors import Forbidden, JobError

from .sweeps import sweep_abort, sweep_advance, sweep_list, sweep_summary


def sweep_list_view(request: HttpRequest) -> HttpResponse:
    """Every sweep, newest first, a page at a time."""
    page = Paginator(sweep_list(request.user), 50).get_page(request.GET.get("page"))
    return render(request, "models/sweeps.html", {"page": page, "sweeps": [(s, sweep_summary(s)) for s in page]})


def sweep_detail(request: HttpRequest, pk: int) -> HttpResponse:
    sweep = get_object_or_404(sweep_list(), pk=pk)
    sweep_advance(sweep.pk)  # a trial cancelled while queued must not stall it
    sweep = sweep_list().get(pk=pk)  # read again with its trials as they are now
    summary = sweep_summary(sweep)
    order = request.GET.get("order", "best")
    trials = list(summary["trials"])
    if order == "best":
        scored = [t for t in trials if t.value is not None]
        rest = [t for t in trials if t.value is None]
        trials = sorted(scored, key=lambda t: t.value or 0.0, reverse=sweep.maximize) + rest
    params = list(sweep.space)
    plot = {
        "params": params,
        "log": [bool(sweep.space[p].get("log")) for p in params],
        "metric": sweep.metric,
        "maximize": sweep.maximize,
        "trials": [{"number": t.number, "params": t.params, "value": t.value, "state": t.state, "model": t.model_id}
                   for t in summary["trials"]],
    }
    runs = [{"id": t.model_id, "name": f"#{t.number}"} for t in summary["trials"] if t.model_id][:20]
    return render(request, "models/sweep.html", {
        "sweep": sweep, "summary": summary, "trials": trials, "order": order, "params": params,
        "plot_data": plot, "runs": runs, "compare_ids": ",".join(str(r["id"]) for r in runs),
        "can_modify": request.user.pk == sweep.owner_id or request.user.is_staff,
        "space_text": json.dumps(sweep.space), "base_text": json.dumps(sweep.base),
    })


@require_POST
def sweep_abort_view(request: HttpRequest, pk: int) -> HttpResponse:
    sweep = get_object_or_404(sweep_list(), pk=pk)
    try:
        if not (request.user.pk == sweep.owner_id or request.user.is_staff):
            raise Forbidden("Only the owner of this sweep (or an admin) can abort it.")
        aborted = sweep_abort(sweep)
    except JobError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"Sweep aborted; {aborted} unfinished trial{'s' if aborted != 1 else ''} aborted.")
    return redirect("sweep_detail", pk=pk)
