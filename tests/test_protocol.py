"""The worker/child protocol: every event round-trips, and a malformed line is refused
with a reason (the runner logs and counts it instead of crashing)."""
from __future__ import annotations

import pytest

from workers import protocol as p

EXAMPLES = [
    p.Progress(progress=0.5, eta=12.0, next_snapshot_eta=3.0),
    p.Progress(progress=1),
    p.TrainRows(rows=[[1, 0.01, {"train_loss": 2.3, "lr": 0.01}]]),
    p.Metrics(iteration=10, epoch=1.0, values={"val_loss": 0.4, "val_accuracy": 0.9, "val_top5": None}),
    p.Snapshot(epoch=1.0, iteration=10, filename="snapshot_iter_10.pt", val_accuracy=0.9),
    p.Notice(message="Fine-tuning: every layer was loaded."),
    p.Log(message="hello", level="warning"),
    p.Error(message="Loss became NaN", peer_lost=False),
    p.Telemetry(values={"utilization": 93.0, "memory_used": 1.5e9}),
    p.Summary(startup_seconds=0.8, images=1000, images_per_second=None),
    p.Result(data={"labels": ["a", "b"], "counts": {"train": 8}}),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: e.name)
def test_every_event_round_trips(event: p.Event) -> None:
    line = p.encode(event)
    assert '"v": 1' in line and f'"event": "{event.name}"' in line
    assert p.decode(line) == event


@pytest.mark.parametrize(
    "line,reason",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"event": "progress", "progress": 0.5}', "protocol version None"),
        ('{"v": 2, "event": "progress", "progress": 0.5}', "protocol version 2"),
        ('{"v": 1, "event": "teleport"}', "unknown event 'teleport'"),
        ('{"v": 1, "event": "progress"}', "missing field 'progress'"),
        ('{"v": 1, "event": "progress", "progress": "half"}', "field 'progress' is str"),
        ('{"v": 1, "event": "progress", "progress": true}', "field 'progress' is bool"),
        ('{"v": 1, "event": "metrics", "iteration": 1.5, "epoch": 1, "values": {}}', "field 'iteration' is float"),
        ('{"v": 1, "event": "notice", "message": "x", "colour": "red"}', "unknown field(s) colour"),
    ],
)
def test_malformed_lines_are_refused_with_a_reason(line: str, reason: str) -> None:
    with pytest.raises(p.ProtocolError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        p.decode(line)


CHILD = """
from workers import protocol
protocol.emit(protocol.Progress(progress=0.5))
print('{"v": 1, "event": "progress", "progress": "half"}')
print('{"v": 1, "event": "teleport"}')
print('plain log output')
protocol.emit(protocol.Notice(message="still here"))
"""


@pytest.mark.django_db(transaction=True)  # the runner ends stale connections, as a worker does
def test_the_runner_logs_and_counts_a_malformed_event_and_relays_the_rest(tmp_path, owner) -> None:
    """A child that prints bad events between good ones: the good ones reach the handler,
    the bad ones go to the job log with the reason, and the run is not disturbed."""
    from django.utils import timezone

    from workers.models import Job
    from workers.runner import run_child

    (tmp_path / "child_with_bad_events.py").write_text(CHILD)
    job = Job.objects.create(kind="dataset", name="bad-events", owner=owner, status="running", started_at=timezone.now())
    seen: list = []
    result = run_child(job, "child_with_bad_events", {}, seen.extend, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0 and result.bad_events == 2
    assert seen == [p.Progress(progress=0.5), p.Notice(message="still here")]
    log = job.log_path.read_text()
    assert "plain log output" in log
    assert "[ignored a malformed event: progress: field 'progress' is str" in log
    assert "[ignored a malformed event: unknown event 'teleport'" in log
