"""Sweeps: many training runs over a search space, each trial an ordinary model.

Modes: "grid" makes one model per combination of the listed values (DIGITS' learning
rate x batch size sweeps), in a fixed order; "random" samples the space; "optuna" asks
Optuna's TPE sampler. Optuna runs in ask-and-tell form on a study rebuilt in memory from
our own rows (Trial) each time it is asked, so no Optuna storage exists and a restart
loses nothing; its pruners (median, Hyperband) are asked at each validation of a running
trial, which is stopped (aborted, state "pruned") when they say so.

At most `max_concurrent` trials exist unfinished at a time (and the user's device limit
still holds in the queue); a finished trial (done, failed, pruned) makes room for the
next, until `max_trials`. `sweep_advance` does that, under a row lock; it runs when a
trial ends (models_app/kind.py) and whenever the sweep is read, so a trial cancelled
while queued cannot stall the sweep.
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import Any

from django.contrib.auth.models import User
from django.db import models as db_models
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from datasets.models import Dataset
from workers.errors import Conflict, JobError
from workers.models import JobStatus
from workers.permissions import AnyUser, can_view, shares_team_q
from workers.services import Placement, job_abort
from workers.transitions import job_transition

from .models import Metric, Pruner, Sweep, SweepMode, SweepStatus, TrainedModel, Trial, TrialState
from .services import PARAM_FIELDS, model_create, model_refresh_best, validate_params

log = logging.getLogger(__name__)

NOT_SWEEPABLE = {"custom_code", "base_model", "base_epoch", "keep_snapshots"}


# -- the search space ----------------------------------------------------------------------


def param_kind(name: str) -> str:
    """"float", "int", "choice" or "bool": how a parameter can be swept."""
    if name not in PARAM_FIELDS or name in NOT_SWEEPABLE:
        sweepable = ", ".join(f for f in PARAM_FIELDS if f not in NOT_SWEEPABLE)
        raise JobError(f"{name!r} cannot be swept; these can: {sweepable}.", field="space")
    field = TrainedModel._meta.get_field(name)
    if isinstance(field, db_models.BooleanField):
        return "bool"
    if getattr(field, "choices", None):
        return "choice"
    if isinstance(field, (db_models.IntegerField, db_models.PositiveIntegerField, db_models.BigIntegerField)):
        return "int"
    if isinstance(field, db_models.FloatField):
        return "float"
    return "choice"


def _clean_value(name: str, value: Any) -> Any:
    """One value of a parameter, checked by the model field's own rules."""
    field = TrainedModel._meta.get_field(name)
    try:
        cleaned = field.clean(value, None)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - a ValidationError's messages, for the user
        messages = getattr(exc, "messages", [str(exc)])
        raise JobError(f"{name} = {value!r}: {' '.join(messages)}", field="space") from None
    return cleaned


def parse_space(space: Any, mode: str) -> dict[str, dict[str, Any]]:
    """{param: {"values": [...]}} or {param: {"low", "high", "log", "step"}} (ranges: random
    and optuna only), each value checked as the model form would."""
    if not isinstance(space, dict) or not space:
        raise JobError("Give at least one parameter to sweep, with its values or range.", field="space")
    out: dict[str, dict[str, Any]] = {}
    for name, spec in space.items():
        kind = param_kind(name)
        if isinstance(spec, list):
            spec = {"values": spec}
        if not isinstance(spec, dict):
            raise JobError(f"{name}: give a list of values or {{\"low\": .., \"high\": ..}}.", field="space")
        if "values" in spec:
            values = spec["values"]
            if not isinstance(values, list) or not values:
                raise JobError(f"{name}: give at least one value.", field="space")
            cleaned = list(dict.fromkeys(_clean_value(name, v) for v in values))
            out[name] = {"values": cleaned}
            continue
        if mode == SweepMode.GRID:
            raise JobError(f"{name}: a grid takes lists of values; ranges are for random search and optimise.", field="space")
        if kind not in ("float", "int"):
            raise JobError(f"{name} takes a list of values, not a range.", field="space")
        try:
            low, high = float(spec["low"]), float(spec["high"])
        except (KeyError, TypeError, ValueError):
            raise JobError(f"{name}: a range needs numbers low and high.", field="space") from None
        log_scale = bool(spec.get("log", False))
        if not low < high:
            raise JobError(f"{name}: low must be below high.", field="space")
        if log_scale and low <= 0:
            raise JobError(f"{name}: a log range needs low above 0.", field="space")
        _clean_value(name, int(low) if kind == "int" else low)
        _clean_value(name, int(high) if kind == "int" else high)
        entry: dict[str, Any] = {"low": int(low) if kind == "int" else low, "high": int(high) if kind == "int" else high,
                                 "log": log_scale, "int": kind == "int"}
        if spec.get("step") is not None:
            if log_scale:
                raise JobError(f"{name}: a range is either log-scaled or stepped, not both.", field="space")
            entry["step"] = int(spec["step"]) if kind == "int" else float(spec["step"])
        out[name] = entry
    return out


def grid_size(space: dict[str, dict[str, Any]]) -> int:
    return math.prod(len(spec["values"]) for spec in space.values())


def grid_combination(space: dict[str, dict[str, Any]], number: int) -> dict[str, Any]:
    """The `number`-th combination, the last parameter varying fastest."""
    names = list(space)
    combos = itertools.product(*(space[n]["values"] for n in names))
    return dict(zip(names, next(itertools.islice(combos, number, None))))


def distributions(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for name, spec in space.items():
        if "values" in spec:
            out[name] = CategoricalDistribution(spec["values"])
        elif spec["int"]:
            out[name] = IntDistribution(spec["low"], spec["high"], log=spec["log"], step=spec.get("step", 1))
        else:
            out[name] = FloatDistribution(spec["low"], spec["high"], log=spec["log"], step=spec.get("step"))
    return out


# -- the study, rebuilt from our rows --------------------------------------------------------


def _study(sweep: Sweep, trials: list[Trial], seed_offset: int = 0) -> Any:
    import optuna
    from optuna.trial import TrialState as OptunaState
    from optuna.trial import create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = sweep.seed + seed_offset
    sampler = (
        optuna.samplers.RandomSampler(seed=seed) if sweep.mode == SweepMode.RANDOM
        else optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, sweep.max_trials // 4)), constant_liar=True)
    )
    if sweep.pruner == Pruner.MEDIAN:
        pruner: Any = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    elif sweep.pruner == Pruner.HYPERBAND:
        epochs = float(sweep.base.get("epochs") or TrainedModel._meta.get_field("epochs").default)
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, round(epochs * 100)))
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(direction="maximize" if sweep.maximize else "minimize", sampler=sampler, pruner=pruner)
    dists = distributions(sweep.space)
    states = {TrialState.COMPLETE: OptunaState.COMPLETE, TrialState.PRUNED: OptunaState.PRUNED,
              TrialState.FAILED: OptunaState.FAIL, TrialState.RUNNING: OptunaState.RUNNING}
    for trial in trials:
        params = {k: v for k, v in trial.params.items() if k in dists}
        if set(params) != set(dists):
            continue
        try:
            study.add_trial(create_trial(
                state=states[TrialState(trial.state)],
                value=trial.value if trial.state == TrialState.COMPLETE and trial.value is not None else None,
                params=params, distributions=dists,
                intermediate_values={int(k): float(v) for k, v in trial.intermediate.items()},
            ))
        except ValueError:  # a complete trial without a value, or a value outside the space
            log.warning("sweep %s: trial %s left out of the study", sweep.pk, trial.number)
    return study


def next_params(sweep: Sweep, trials: list[Trial]) -> dict[str, Any] | None:
    """The parameters of the next trial; None when a grid is exhausted."""
    number = len(trials)
    if sweep.mode == SweepMode.GRID:
        return grid_combination(sweep.space, number) if number < grid_size(sweep.space) else None
    study = _study(sweep, trials, seed_offset=number)
    return dict(study.ask(distributions(sweep.space)).params)


def should_prune(sweep: Sweep, trial: Trial, others: list[Trial]) -> bool:
    if sweep.pruner == Pruner.NONE or sweep.mode == SweepMode.GRID and sweep.pruner == Pruner.HYPERBAND:
        return False
    study = _study(sweep, [*others, trial])
    frozen = study.get_trials(deepcopy=False)[-1]
    return bool(frozen.intermediate_values) and bool(study.pruner.prune(study, frozen))


# -- creating and advancing ------------------------------------------------------------------


def sweep_list(user: AnyUser | None = None) -> QuerySet[Sweep]:
    """Sweeps (those `user` may see: their owner's teams', as a model of "team" visibility),
    each with its trials in one query for the whole list (`sweep_summary` reads them)."""
    trials = Trial.objects.select_related("model__job").order_by("number")
    sweeps = Sweep.objects.select_related("owner", "dataset", "dataset__job").prefetch_related(
        db_models.Prefetch("trials", queryset=trials, to_attr="listed_trials")
    )
    if user is not None and not getattr(user, "is_staff", False):
        sweeps = sweeps.filter(shares_team_q(user, "owner_id")) if user.is_authenticated else sweeps.none()
    return sweeps


def sweep_visible(user: AnyUser, pk: int) -> bool:
    return sweep_list(user).filter(pk=pk).exists()


def sweep_create(
    *, owner: User, name: str, dataset: Dataset, mode: str, space: Any, base: dict[str, Any], max_trials: int,
    max_concurrent: int, metric: str = "val_accuracy", pruner: str = Pruner.NONE, seed: int = 0, group: str = "",
    placement: Placement | None = None,
) -> Sweep:
    """Check the space and the shared parameters (with the first trial's values), then
    start the first trials."""
    if mode not in SweepMode.values:
        raise JobError(f"mode must be one of {', '.join(SweepMode.values)}.", field="mode")
    if not can_view(owner, dataset):
        raise JobError("No such dataset: pick one of yours, your teams' or a public one.", field="dataset")
    # Trials are shared like their sweep (with the owner's teams): the sweep page shows them all.
    base = {k: v for k, v in base.items() if k != "visibility"}
    space = parse_space(space, mode)
    overlap = sorted(set(space) & set(base))
    if overlap:
        raise JobError(f"{', '.join(overlap)} is swept: leave it out of the shared parameters.", field="space")
    if mode == SweepMode.GRID:
        size = grid_size(space)
        if size > max_trials:
            raise JobError(f"The grid has {size} combinations, more than max trials ({max_trials}): raise it or list fewer values.",
                           field="max_trials")
        max_trials = size
    if max_concurrent > max_trials:
        max_concurrent = max_trials
    first = grid_combination(space, 0) if mode == SweepMode.GRID else {
        n: (s["values"][0] if "values" in s else s["low"]) for n, s in space.items()
    }
    validate_params(owner, dataset, _resolved({**base, **first}))
    placement = placement or Placement()
    sweep = Sweep.objects.create(
        owner=owner, name=name, group=group or f"sweep: {name}"[:100], dataset=dataset, mode=mode, space=space, base=base,
        placement={"devices": placement.devices, "priority": placement.priority, "multi_host": placement.multi_host,
                   "time_limit_seconds": placement.time_limit_seconds, "preemptible": placement.preemptible},
        metric=metric, max_trials=max_trials, max_concurrent=max_concurrent, pruner=pruner, seed=seed,
    )
    sweep_advance(sweep.pk)
    return sweep


def _trial_value(sweep: Sweep, model_id: int) -> tuple[float | None, float | None]:
    """(the trial's best value of the sweep's metric, its epoch)."""
    model_refresh_best(model_id)
    if sweep.metric == "val_accuracy":
        row = TrainedModel.objects.filter(pk=model_id).values_list("best_val_accuracy", "best_epoch").first()
        return (row[0], row[1]) if row else (None, None)
    best = Metric.objects.filter(model_id=model_id, name="val_loss").order_by("value", "iteration").values_list("value", "epoch").first()
    return (best[0], best[1]) if best else (None, None)


def _finish_trial(sweep: Sweep, trial: Trial, status: str, error: str = "") -> None:
    if trial.state != TrialState.RUNNING:
        return
    if status == JobStatus.DONE:
        trial.value, trial.best_epoch = _trial_value(sweep, trial.model_id) if trial.model_id else (None, None)
        if trial.value is None or not math.isfinite(trial.value):
            trial.state, trial.note = TrialState.FAILED, "finished without a validation metric"
        else:
            trial.state = TrialState.COMPLETE
    else:
        if trial.model_id:
            trial.value, trial.best_epoch = _trial_value(sweep, trial.model_id)
        trial.state = TrialState.FAILED
        trial.note = (error or status)[:300]
    trial.save(update_fields=["state", "value", "best_epoch", "note"])


def sweep_advance(sweep_id: int) -> None:
    """Close the trials whose model finished, then start trials until `max_concurrent`
    are unfinished or `max_trials` exist; mark the sweep done when all are finished."""
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().filter(pk=sweep_id).first()
        if sweep is None:
            return
        trials = list(sweep.trials.select_related("model__job").order_by("number"))
        for trial in trials:
            if trial.state == TrialState.RUNNING:
                job = trial.model.job if trial.model else None
                if job is None:
                    _finish_trial(sweep, trial, JobStatus.ERROR, "its model was deleted")
                elif job.status in JobStatus.finished():
                    _finish_trial(sweep, trial, job.status, job.error)
        while sweep.status == SweepStatus.RUNNING:
            running = sum(1 for t in trials if t.state == TrialState.RUNNING)
            if running >= sweep.max_concurrent or len(trials) >= sweep.max_trials:
                break
            params = next_params(sweep, trials)
            if params is None:
                break
            trials.append(_start_trial(sweep, len(trials), params))
        if sweep.status == SweepStatus.RUNNING and all(t.state != TrialState.RUNNING for t in trials) and (
            len(trials) >= sweep.max_trials or (sweep.mode == SweepMode.GRID and len(trials) >= grid_size(sweep.space))
        ):
            Sweep.objects.filter(pk=sweep.pk).update(status=SweepStatus.DONE, finished_at=timezone.now())


def _start_trial(sweep: Sweep, number: int, params: dict[str, Any]) -> Trial:
    placement = Placement(devices=sweep.placement.get("devices", 1), priority=sweep.placement.get("priority", 1),
                          multi_host=sweep.placement.get("multi_host", False),
                          time_limit_seconds=sweep.placement.get("time_limit_seconds"),
                          preemptible=sweep.placement.get("preemptible", False))
    described = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
    try:
        with transaction.atomic():
            model = model_create(
                owner=sweep.owner, name=f"{sweep.name} #{number} ({described})"[:200], dataset=sweep.dataset,
                group=sweep.group, notes=f"Trial {number} of sweep {sweep.name!r}.", placement=placement,
                **_resolved({**sweep.base, **params}),
            )
    except JobError as exc:  # these values do not make a valid model: the trial fails, the sweep goes on
        return Trial.objects.create(sweep=sweep, number=number, params=params, state=TrialState.FAILED, note=str(exc)[:300])
    return Trial.objects.create(sweep=sweep, number=number, params=params, model=model)


def _resolved(params: dict[str, Any]) -> dict[str, Any]:
    """The stored (JSON) parameters as model_create takes them: the base model as a row."""
    out = dict(params)
    if out.get("base_model") is not None and not isinstance(out["base_model"], TrainedModel):
        out["base_model"] = TrainedModel.objects.filter(pk=out["base_model"]).first()
        if out["base_model"] is None:
            raise JobError("The sweep's base model was deleted.", field="base_model")
    return out


# -- hooks from the training kind (models_app/kind.py) ------------------------------------------


def sweep_on_validation(model_id: int, validations: dict[str, list[tuple[float, float]]]) -> None:
    """A trial validated: record (epoch, value) of the sweep's metric, and stop the trial
    when the sweep's pruner says it will not beat the others."""
    trial = Trial.objects.select_related("sweep").filter(model_id=model_id, state=TrialState.RUNNING).first()
    if trial is None:
        return
    sweep = trial.sweep
    points = validations.get(sweep.metric, [])
    if not points:
        return
    for epoch, point in points:
        trial.intermediate[str(round(epoch * 100))] = point
    Trial.objects.filter(pk=trial.pk).update(intermediate=trial.intermediate)
    if sweep.status != SweepStatus.RUNNING or sweep.pruner == Pruner.NONE:
        return
    others = [t for t in sweep.trials.exclude(pk=trial.pk).order_by("number")]
    if should_prune(sweep, trial, others):
        last_epoch, last_value = points[-1]
        message = (f"Pruned by sweep {sweep.name!r} ({sweep.get_pruner_display().split(' (')[0].lower()} rule) at epoch "
                   f"{last_epoch:g}: its {sweep.metric} {last_value:.4g} will not beat the other trials.")
        value, best_epoch = _trial_value(sweep, model_id)
        Trial.objects.filter(pk=trial.pk).update(state=TrialState.PRUNED, note=message[:300], value=value, best_epoch=best_epoch)
        job_transition(model_id, JobStatus.ABORTED, from_=JobStatus.active(), message=message)
        sweep_advance(sweep.pk)


def sweep_on_trial_end(model_id: int, status: str, error: str = "") -> None:
    """A trial's model finished (done, failed, aborted; the runner calls this just before
    it records "done"): close the trial, then make room for the next."""
    sweep_id = Trial.objects.filter(model_id=model_id).values_list("sweep_id", flat=True).first()
    if sweep_id is None:
        return
    with transaction.atomic():
        sweep = Sweep.objects.select_for_update().get(pk=sweep_id)
        trial = Trial.objects.filter(model_id=model_id).first()
        if trial is not None:
            _finish_trial(sweep, trial, status, error)
    sweep_advance(sweep_id)


# -- people's actions --------------------------------------------------------------------------


def sweep_abort(sweep: Sweep) -> int:
    """Stop the sweep and every unfinished trial. Returns how many trials were aborted."""
    if sweep.status != SweepStatus.RUNNING:
        raise Conflict(f"This sweep is already {sweep.get_status_display().lower()}.")
    Sweep.objects.filter(pk=sweep.pk).update(status=SweepStatus.ABORTED, finished_at=timezone.now())
    aborted = 0
    for trial in sweep.trials.filter(state=TrialState.RUNNING).select_related("model__job"):
        if trial.model and trial.model.job.is_active:
            job_abort(trial.model.job)
            aborted += 1
        Trial.objects.filter(pk=trial.pk).update(state=TrialState.FAILED, note="the sweep was aborted")
    return aborted


def sweep_summary(sweep: Sweep) -> dict[str, Any]:
    """The sweep page and API: its trials, best first by the metric, the best marked."""
    listed: list[Trial] | None = getattr(sweep, "listed_trials", None)  # prefetched by sweep_list
    trials = listed if listed is not None else list(sweep.trials.select_related("model__job").order_by("number"))
    scored = [t for t in trials if t.value is not None and t.state == TrialState.COMPLETE]
    best = None
    if scored:
        best = max(scored, key=lambda t: t.value or 0.0) if sweep.maximize else min(scored, key=lambda t: t.value or 0.0)
    counts = {state: sum(1 for t in trials if t.state == state) for state in TrialState.values}
    return {"trials": trials, "best": best, "counts": counts}


def parse_space_text(text: str) -> dict[str, Any]:
    """The model form's sweep box: one option per line,

        learning_rate = 0.1, 0.01, 0.001      values (a grid, or choices to sample)
        learning_rate = 1e-4 .. 1e-1 log      a log-scaled range (random search, optimise)
        batch_size = 16 .. 128 step 16        a stepped range

    into the API's space ({name: [values]} or {name: {"low", "high", "log", "step"}})."""
    import re

    space: dict[str, Any] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, rhs = line.partition("=")
        name, rhs = name.strip(), rhs.strip()
        if not sep or not name or not rhs:
            raise JobError(f"Line {lineno}: write `option = values` or `option = low .. high`.", field="sweep_space")
        match = re.fullmatch(r"(\S+)\s*\.\.\s*(\S+)\s*(.*)", rhs)
        if match:
            low, high, flags = match.groups()
            entry: dict[str, Any] = {"low": _number(low, lineno), "high": _number(high, lineno), "log": False}
            words = flags.split()
            while words:
                word = words.pop(0).lower()
                if word == "log":
                    entry["log"] = True
                elif word == "step" and words:
                    entry["step"] = _number(words.pop(0), lineno)
                else:
                    raise JobError(f"Line {lineno}: after a range, `log` or `step N` (got {word!r}).", field="sweep_space")
            space[name] = entry
        else:
            space[name] = [_scalar(v.strip()) for v in rhs.split(",") if v.strip()]
    return space


def _number(text: str, lineno: int) -> float | int:
    try:
        return int(text) if text.lstrip("-").isdecimal() else float(text)
    except ValueError:
        raise JobError(f"Line {lineno}: {text!r} is not a number.", field="sweep_space") from None


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text) if text.lstrip("-").isdecimal() else float(text)
    except ValueError:
        return text
