"""The protocol between a worker and its job's child process: versioned JSON lines.

The child (`python -m <kind's module> --spec spec.json`) writes one event per line on
stdout, `{"v": 1, "event": "<name>", ...fields}`, with `emit(SomeEvent(...))`; the runner
(workers/runner.py) reads each line back with `decode()` into the same dataclass and hands
batches of them to the kind's `apply`. Both sides import this module, so a field has one
name, one type and one default. A line that is not JSON is log output; a JSON line that is
not a valid event of this version is logged and counted, never fatal to the relay.

This module imports nothing from Django: the child imports it before anything else.
"""
from __future__ import annotations

import json
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import IO, Any, ClassVar, TypeVar, Union

PROTOCOL_VERSION = 1


class ProtocolError(ValueError):
    """A JSON line that is not a valid event: the reason says which part."""


@dataclass(frozen=True)
class Event:
    name: ClassVar[str] = ""


@dataclass(frozen=True)
class Progress(Event):
    """How far the job is (0..1) and the seconds it expects to need; phases and the time to
    the next snapshot are optional."""

    name: ClassVar[str] = "progress"
    progress: float
    eta: float | None = None
    phase: str = ""
    next_snapshot_eta: float | None = None


@dataclass(frozen=True)
class TrainRows(Event):
    """Training points: [iteration, epoch, {metric: value}] rows, in order."""

    name: ClassVar[str] = "train"
    rows: list[list[Any]]
    t: float | None = None  # when the child sent it (time.time()): the page's latency is measured from here


@dataclass(frozen=True)
class Metrics(Event):
    """Metrics at one iteration (validation, throughput)."""

    name: ClassVar[str] = "metrics"
    iteration: int
    epoch: float
    values: Mapping[str, float | None]
    t: float | None = None  # when the child sent it (time.time())


@dataclass(frozen=True)
class Snapshot(Event):
    """A checkpoint was written (a file in the job's folder) with its validation metrics."""

    name: ClassVar[str] = "snapshot"
    epoch: float
    iteration: int
    filename: str
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_top5: float | None = None


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should read on the job page (a fine-tune's unmatched layers)."""

    name: ClassVar[str] = "notice"
    message: str


@dataclass(frozen=True)
class Log(Event):
    """A line for the job log, from a child that wants it in order with its events."""

    name: ClassVar[str] = "log"
    message: str
    level: str = "info"


@dataclass(frozen=True)
class Error(Event):
    """Why the run failed, in words the user can act on. `peer_lost`: a distributed rank
    lost contact with the others (the job is requeued rather than failed)."""

    name: ClassVar[str] = "error"
    message: str
    peer_lost: bool = False


@dataclass(frozen=True)
class Telemetry(Event):
    """Device readings from inside the child (utilisation, memory, temperature, power)."""

    name: ClassVar[str] = "telemetry"
    values: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Record(Event):
    """What a run needs to be reproduced: package versions, devices, the resolved spec."""

    name: ClassVar[str] = "record"
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Summary(Event):
    """Where the run's time went."""

    name: ClassVar[str] = "summary"
    startup_seconds: float | None = None
    train_seconds: float | None = None
    validation_seconds: float | None = None
    snapshot_seconds: float | None = None
    images: int | None = None
    images_per_second: float | None = None


@dataclass(frozen=True)
class Result(Event):
    """The job's outcome, for its kind to store (a dataset build's labels and counts)."""

    name: ClassVar[str] = "result"
    data: dict[str, Any]


@dataclass(frozen=True)
class Stopped(Event):
    """The child stopped early because the worker asked it to (SIGUSR1: a time limit or a
    preemption), after writing a snapshot at `iteration` (epoch `epoch`); it exits 0."""

    name: ClassVar[str] = "stopped"
    iteration: int
    epoch: float


@dataclass(frozen=True)
class Finished(Event):
    """Every rank, once its last step is taken and its snapshots are written, before it
    tears the process group down: a crash after this (in a library's teardown) loses
    nothing, and its worker does not fail the job for it."""

    name: ClassVar[str] = "finished"
    iteration: int


# The signal a worker sends its child to ask for a graceful stop: snapshot, then exit.
STOP_SIGNAL = "SIGUSR1"


EVENTS: dict[str, type[Event]] = {
    cls.name: cls
    for cls in (Progress, TrainRows, Metrics, Snapshot, Notice, Log, Error, Telemetry, Record, Summary, Result, Stopped, Finished)
}


SpecT = TypeVar("SpecT")


def spec_from_dict(cls: type[SpecT], data: dict[str, Any]) -> SpecT:
    """A job spec (a dataclass, like the events) from its JSON. An unknown key is an
    error: a misspelt field would otherwise be silently replaced by its default."""
    unknown = set(data) - {f.name for f in fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise ValueError(f"unknown spec field(s): {', '.join(sorted(unknown))}")
    return cls(**data)


def encode(event: Event) -> str:
    return json.dumps({"v": PROTOCOL_VERSION, "event": event.name, **asdict(event)})


def emit(event: Event, stream: IO[str] | None = None) -> None:
    """Write one event as a line on stdout (the child's side)."""
    (stream or sys.stdout).write(encode(event) + "\n")


def decode(line: str) -> Event:
    """One line back into its event; ProtocolError says what is wrong with it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ProtocolError("not a JSON object")
    version = data.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    kind = data.pop("event", None)
    cls = EVENTS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolError(f"unknown event {kind!r}")
    hints, known = _shape(cls)
    unknown = set(data) - set(known)
    if unknown:
        raise ProtocolError(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")
    for name, spec in known.items():
        if name not in data:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise ProtocolError(f"{kind}: missing field {name!r}")
            continue
        if not _matches(data[name], hints[name]):
            raise ProtocolError(f"{kind}: field {name!r} is {type(data[name]).__name__}, expected {hints[name]}")
    return cls(**data)


_SHAPES: dict[str, tuple[dict[str, Any], dict[str, Field[Any]]]] = {}


def _shape(cls: type[Event]) -> tuple[dict[str, Any], dict[str, Field[Any]]]:
    """An event class's field types and fields, worked out once (the relay decodes every line)."""
    if cls.name not in _SHAPES:
        _SHAPES[cls.name] = (typing.get_type_hints(cls), {f.name: f for f in fields(cls)})
    return _SHAPES[cls.name]


def _matches(value: Any, hint: Any) -> bool:
    """A shallow check of a JSON value against a field's annotation."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list)
    if origin in (dict, Mapping):
        return isinstance(value, dict)
    return isinstance(value, hint)
