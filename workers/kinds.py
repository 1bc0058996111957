"""Kinds of jobs: the job engine's one plug-in point.

The engine (scheduler, runner, ranks, reaper, abort, resume) knows no domain. Each app
describes its kinds of work by subclassing `Kind` and registering an instance from its
`AppConfig.ready()`; the engine looks a job's kind up by the name stored on the row and
calls the hooks below. Adding a kind is one module in its app and one `register()` line:

    class EvaluationKind(Kind):
        name = "evaluation"
        module = "models_app.evaluation.run"
        ...

    register(EvaluationKind())

Who calls what:
  - `spec`, `env` and `module`: the runner, to start the child process;
  - `inputs` and `artifacts`: what is fetched from, and published to, the artifact store
    (workers/storage.py) before the child starts and once the job is done;
  - `apply`: the runner, for every batch of the child's events (typed: workers/protocol.py)
    while the run owns the job (store them, then publish after commit);
  - `complete`: once the child exited 0, before the job is marked done (may raise JobError
    to fail it instead, e.g. a build that reported no result);
  - `cleanup`: after a failed or aborted run (nothing half-written stays);
  - `blocked`: the scheduler, for jobs that wait on something else (a dataset);
  - `rewind`: when a job is interrupted and requeued (lost worker, killed process), to
    drop what was recorded after its last checkpoint;
  - `prepare_resume`: when a person resumes an aborted or failed job;
  - `before_delete`: before a job is deleted (one at a time or in bulk): delete what
    depends on it, or refuse (Conflict) while something still needs it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import JobError
from .protocol import Event

if TYPE_CHECKING:
    from django.db.models import QuerySet

    from .models import Job

log = logging.getLogger(__name__)


class UnknownKind(LookupError):
    pass


@dataclass(frozen=True)
class Blocked:
    """Why a queued job cannot start yet. `fail`: it never will (its dataset failed),
    so the scheduler fails it with `reason`."""

    reason: str
    fail: bool = False


class Kind:
    """What the engine needs to know about one kind of job. Override what differs."""

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    # True: the scheduler places it on devices, one rank per device (gang allocation), on
    # each device's own queue. False: one task on `queue`, no device.
    uses_devices: ClassVar[bool] = False
    queue: ClassVar[str] = "default"
    # The child process: `python -m <module> --spec spec.json`.
    module: ClassVar[str] = ""
    # Does its child stop gracefully on SIGUSR1 (snapshot at its next step, a Stopped
    # event, exit 0)? Only such kinds get time limits and may be preempted.
    stoppable: ClassVar[bool] = False

    def child_module(self) -> str:
        """The module to run; a kind may read it from settings (the bench swaps the trainer)."""
        return self.module

    def spec(self, job: Job) -> dict[str, Any]:
        raise NotImplementedError

    def env(self, job: Job) -> dict[str, str]:
        return {}

    def preload_env(self) -> dict[str, str]:
        """Environment the child needs from its very start (read by the C library when the
        process starts), so also given to the zygote that pre-imports `child_module()`."""
        return {}

    def inputs(self, job: Job) -> list[Path]:
        """Files or folders (under the job folders) the child reads: fetched from the
        artifact store first, when there is one (workers/storage.py)."""
        return []

    def artifacts(self, job: Job) -> list[Path]:
        """Files or folders the job made, published to the artifact store once it is done."""
        return [job.directory]

    def apply(self, job_id: int, events: list[Event]) -> None:
        """Store a batch of the child's events; publish them after commit."""

    def complete(self, job: Job) -> str:
        """The child exited 0: finish the domain's side. Returns the "done" timeline message."""
        return ""

    def cleanup(self, job: Job) -> None:
        """The run failed or was aborted: remove partial outputs."""

    def blocked(self, job_ids: QuerySet[Any]) -> dict[int, Blocked]:
        """For the given queued jobs (a subquery of their ids), those that must not start
        yet, and why."""
        return {}

    def estimate_seconds(self, job_ids: list[int]) -> dict[int, float]:
        """How long each of these queued jobs should run once started, where the kind can
        tell (from past runs): the queue's estimated start times build on it."""
        return {}

    def rewind(self, job_id: int) -> str:
        """The job is requeued after an interruption: drop what a rerun will record again.
        Returns what the timeline says about where it restarts."""
        return "Requeued to start again."

    def prepare_resume(self, job: Job) -> str:
        """A person resumes an aborted or failed job: check it can go on (JobError if not),
        drop what a rerun will record again, and say where it restarts."""
        raise JobError(f"A {self.label or self.name} job cannot be resumed; clone it to run it again.")

    def before_delete(self, job: Job) -> None:
        """The job is about to be deleted: delete its dependents, or raise Conflict."""

    def page_url(self, job: Job) -> str:
        """Where the job's page is (the console links there); its log by default."""
        from django.urls import reverse

        return reverse("job_log", args=[job.pk])


_registry: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} has no name")
    if kind.name in _registry and type(_registry[kind.name]) is not type(kind):
        raise ValueError(f"a different kind named {kind.name!r} is already registered")
    _registry[kind.name] = kind
    return kind


def get(name: str) -> Kind:
    try:
        return _registry[name]
    except KeyError:
        raise UnknownKind(f"no kind of job named {name!r} is registered (is its app installed?)") from None


def all_kinds() -> list[Kind]:
    return list(_registry.values())


def device_kinds() -> list[str]:
    """Names of the kinds the scheduler places on devices."""
    return [k.name for k in _registry.values() if k.uses_devices]


def stoppable_device_kinds() -> list[str]:
    """Of those, the kinds whose runs stop gracefully (time limits, preemption)."""
    return [k.name for k in _registry.values() if k.uses_devices and k.stoppable]


def complete(kind: Kind, job: Job) -> str:
    """`kind.complete(job)`, with an unexpected failure (a kind's bug) turned into a
    JobError that fails the job, instead of an exception that leaves it running forever.
    The database being unreachable is not a failure: it is raised for the caller to wait."""
    from .outage import UNREACHABLE

    try:
        return kind.complete(job)
    except (JobError, *UNREACHABLE):
        raise
    except Exception as exc:  # noqa: BLE001 - logged with its traceback; the job says what happened
        log.exception("job %s: recording the end of its %s run failed", job.pk, kind.name)
        raise JobError(
            f"The run ended, but recording its results failed ({type(exc).__name__}: {exc}). "
            "This is a bug of the server: the worker's log has the details."
        ) from exc
