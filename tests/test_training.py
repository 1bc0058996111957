"""The training module on real LMDB datasets, called the way the worker calls it (in
this process for speed, or as the child process where killing it matters): solvers,
learning-rate policies, intervals, accumulation, determinism, transforms, fine-tuning,
custom code, resume and early stopping. tests/test_model_api.py runs it through the worker."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.build import build
from models_app.training.augment import BatchTransform, TransformSpec, centre_crop
from models_app.training.lr_policy import LrSchedule, parse_steps
from models_app.training.spec import TrainSpec
from models_app.training.train import TrainingError, cli, main
from tests.imagegen import make_shapes_folder

ROOT = Path(__file__).resolve().parent.parent


def _build(root: Path, classes: tuple[str, ...], size: int = 28, **extra: object) -> Path:
    folder = make_shapes_folder(root / "src", per_class=20, classes=classes)
    out = root / "db"
    out.mkdir()
    build({
        "source": "folder", "folder": str(folder), "output_dir": str(out), "width": size, "height": size, "channels": 3,
        "val_percent": 25, "test_percent": 0, "seed": 0, "workers": 1, "data_roots": [str(root)], **extra,
    })
    return out


@pytest.fixture(scope="module")
def shapes3(tmp_path_factory) -> Path:
    """3 classes: 45 training and 15 validation images, 28x28 colour."""
    return _build(tmp_path_factory.mktemp("shapes3"), ("circle", "square", "triangle"))


@pytest.fixture(scope="module")
def shapes2(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("shapes2"), ("circle", "square"))


def make_spec(db: Path, out: Path, **extra) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    classes = len((db / "labels.txt").read_text().splitlines())
    return {
        "network": "lenet", "custom_code": "", "num_classes": classes, "input_shape": [3, 28, 28],
        "train_db": str(db / "train_db"), "val_db": str(db / "val_db"), "mean_path": str(db / "mean.npy"),
        "output_dir": str(out), "epochs": 2, "batch_size": 9, "learning_rate": 0.01, "momentum": 0.9,
        "weight_decay": 0.0, "seed": 1, "num_workers": 0, "solver": "sgd", **extra,
    }


def run_training(spec: dict) -> list[dict]:
    """Train in this process; returns the events it printed."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        main(spec)
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def series(events: list[dict], name: str) -> list[tuple[int, float]]:
    points = []
    for e in events:
        if e["event"] == "train":
            points += [(row[0], row[2][name]) for row in e["rows"] if name in row[2]]
        elif e["event"] == "metrics" and name in e["values"]:
            points.append((e["iteration"], e["values"][name]))
    return points


def snapshots(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "snapshot"]


# --- learning-rate policies ----------------------------------------------------------

CAFFE = {
    "fixed": lambda x, g, s, p, steps: 1.0,
    "step": lambda x, g, s, p, steps: g ** math.floor(x / s),
    "multistep": lambda x, g, s, p, steps: g ** len([v for v in steps if x >= v]),
    "exp": lambda x, g, s, p, steps: g**x,
    "inv": lambda x, g, s, p, steps: (1 + g * x) ** (-p),
    "poly": lambda x, g, s, p, steps: (1 - x / 100) ** p,
    "sigmoid": lambda x, g, s, p, steps: 1 / (1 + math.exp(-g * (x - s))),
    "cosine": lambda x, g, s, p, steps: (1 + math.cos(math.pi * x / 100)) / 2,
}


@pytest.mark.parametrize("policy", sorted(CAFFE))
def test_learning_rate_policies_follow_the_caffe_formulas(policy):
    gamma = {"exp": 0.97, "inv": 0.05, "sigmoid": 0.2}.get(policy, 0.5)
    schedule = LrSchedule(base_lr=0.1, policy=policy, step_size=25, steps=(30.0, 70.0), gamma=gamma, power=2.0)
    total = 400
    for i in range(0, total, 7):
        x = 100 * i / total
        assert schedule.learning_rate(i, total, 40) == pytest.approx(0.1 * CAFFE[policy](x, gamma, 25, 2.0, (30, 70)), rel=1e-12)


def test_warm_up_ramps_linearly_then_hands_over_to_the_policy():
    schedule = LrSchedule(base_lr=0.2, policy="cosine", warmup_epochs=2)
    per_epoch = 10
    assert [schedule.learning_rate(i, 100, per_epoch) for i in (0, 9, 19)] == pytest.approx(
        [0.2 * 1 / 20 * schedule.factor(0), 0.2 * 10 / 20 * schedule.factor(9), 0.2 * 20 / 20 * schedule.factor(19)]
    )
    assert schedule.learning_rate(20, 100, per_epoch) == pytest.approx(0.2 * schedule.factor(20))


def test_multistep_steps_are_validated():
    assert parse_steps("50, 85") == [50.0, 85.0]
    for bad in ("85,50", "0", "100", "x"):
        with pytest.raises(ValueError):
            parse_steps(bad)


def test_training_uses_the_policy_for_every_iteration(shapes3, tmp_path):
    spec = make_spec(shapes3, tmp_path, epochs=4, lr_policy="multistep", lr_steps="50,75", lr_gamma=0.5, lr_warmup_epochs=1)
    events = run_training(spec)
    lrs = series(events, "lr")
    total = 4 * 5  # 45 images / batch 9 = 5 iterations per epoch
    schedule = LrSchedule.from_spec(TrainSpec.from_dict(spec))
    assert [it for it, _ in lrs] == list(range(1, total + 1))
    # The rate used for step i (reported at iteration i + 1) is the schedule's value for i.
    assert [lr for _, lr in lrs] == pytest.approx([schedule.learning_rate(i, total, 5) for i in range(total)])
    assert lrs[0][1] == pytest.approx(0.01 / 5) and lrs[-1][1] == pytest.approx(0.01 * 0.25)


# --- solvers, intervals, accumulation, determinism -------------------------------------

SOLVER_STATE = {
    "sgd": "momentum_buffer", "nesterov": "momentum_buffer", "adagrad": "sum", "rmsprop": "square_avg",
    "adadelta": "acc_delta", "adam": "exp_avg", "adamw": "exp_avg",
}


@pytest.mark.parametrize("solver", sorted(SOLVER_STATE))
def test_every_solver_trains_and_snapshots_its_state(shapes3, tmp_path, solver):
    lr = {"adadelta": 1.0, "adam": 0.001, "adamw": 0.001, "rmsprop": 0.001}.get(solver, 0.01)
    events = run_training(make_spec(shapes3, tmp_path, epochs=1, solver=solver, learning_rate=lr, weight_decay=1e-4))
    losses = [v for _, v in series(events, "train_loss")]
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    state = torch.load(tmp_path / snapshots(events)[-1]["filename"], weights_only=True)
    first_param_state = next(iter(state["optimizer"]["state"].values()))
    assert SOLVER_STATE[solver] in first_param_state
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 1e-4
    if solver == "nesterov":
        assert state["optimizer"]["param_groups"][0]["nesterov"] is True


def test_fractional_snapshot_and_validation_intervals(shapes3, tmp_path):
    events = run_training(make_spec(shapes3, tmp_path, epochs=2, snapshot_interval=0.4, val_interval=0.4))
    assert [s["epoch"] for s in snapshots(events)] == [0.4, 0.8, 1.2, 1.6, 2.0]
    assert [it for it, _ in series(events, "val_loss")] == [2, 4, 6, 8, 10]
    assert sorted(p.name for p in tmp_path.glob("snapshot_*.pt")) == sorted(s["filename"] for s in snapshots(events))


def test_multi_epoch_snapshot_interval_still_snapshots_the_end(shapes3, tmp_path):
    events = run_training(make_spec(shapes3, tmp_path, epochs=5, snapshot_interval=2))
    assert [s["epoch"] for s in snapshots(events)] == [2.0, 4.0, 5.0]
    assert len(series(events, "val_loss")) == 5  # validation stays every epoch


def test_fractional_epochs(shapes3, tmp_path):
    events = run_training(make_spec(shapes3, tmp_path, epochs=1.4))
    assert len(series(events, "train_loss")) == 7 and snapshots(events)[-1]["epoch"] == 1.4


def _final_weights(out: Path, events: list[dict]) -> dict:
    return torch.load(out / snapshots(events)[-1]["filename"], weights_only=True)["model"]


def test_batch_accumulation_equals_one_larger_batch(shapes3, tmp_path):
    common = {"momentum": 0.0, "epochs": 2, "learning_rate": 0.05}
    small = run_training(make_spec(shapes3, tmp_path / "a", batch_size=6, batch_accumulation=2, **common))
    large = run_training(make_spec(shapes3, tmp_path / "b", batch_size=12, **common))
    # Same number of optimizer steps, same losses, same weights.
    assert [it for it, _ in series(small, "train_loss")] == [it for it, _ in series(large, "train_loss")] == list(range(1, 9))
    assert [v for _, v in series(small, "train_loss")] == pytest.approx([v for _, v in series(large, "train_loss")], rel=1e-4)
    a, b = _final_weights(tmp_path / "a", small), _final_weights(tmp_path / "b", large)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_same_seed_same_curves_other_seed_other_curves(shapes3, tmp_path):
    extra = {"flip": "h", "rotation": 10, "hsv_jitter": 0.1, "crop_size": 24}
    first = run_training(make_spec(shapes3, tmp_path / "a", **extra))
    again = run_training(make_spec(shapes3, tmp_path / "b", **extra))
    other = run_training(make_spec(shapes3, tmp_path / "c", **{**extra, "seed": 2}))
    for name in ("train_loss", "val_loss", "val_accuracy", "val_top5"):
        assert series(first, name) == series(again, name)
    assert series(first, "train_loss") != series(other, "train_loss")


# --- transforms --------------------------------------------------------------------------


@pytest.mark.parametrize("mean", ["none", "image", "pixel"])
def test_crop_and_mean_variants_train(shapes3, tmp_path, mean):
    events = run_training(make_spec(shapes3, tmp_path, epochs=1, crop_size=20, mean_subtraction=mean, flip="hv", rotate90=True))
    state = torch.load(tmp_path / snapshots(events)[-1]["filename"], weights_only=True)
    assert state["input_shape"] == [3, 20, 20] and state["mean_subtraction"] == mean and state["crop_size"] == 20
    assert all(math.isfinite(v) for _, v in series(events, "train_loss"))


def _batch(n: int = 6, c: int = 3, h: int = 8, w: int = 10) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_mean_subtraction_modes_and_centre_crop():
    images = _batch()
    mean = np.full((8, 10, 3), 10.0, dtype=np.float32)
    mean[:, :, 1] = 20.0
    cpu = torch.device("cpu")
    image = BatchTransform(TransformSpec(mean_subtraction="image", crop_size=4), mean, cpu).eval(images)
    expected = centre_crop(images.float() - torch.tensor([10.0, 20.0, 10.0])[None, :, None, None], 4) / 255
    torch.testing.assert_close(image, expected)
    pixel = BatchTransform(TransformSpec(mean_subtraction="pixel"), mean, cpu).eval(images)
    torch.testing.assert_close(pixel, (images.float() - torch.tensor([10.0, 20.0, 10.0])[None, :, None, None]) / 255)
    none = BatchTransform(TransformSpec(mean_subtraction="none"), mean, cpu).eval(images)
    torch.testing.assert_close(none, images.float() / 255)


def test_random_crops_are_windows_of_each_image_and_differ_between_images():
    images = _batch(n=32)
    out = BatchTransform(TransformSpec(mean_subtraction="none", crop_size=5), None, torch.device("cpu")).train(images) * 255
    offsets = set()
    for i in range(len(images)):
        found = [
            (top, left) for top in range(4) for left in range(6)
            if torch.equal(out[i].round().to(torch.uint8), images[i, :, top : top + 5, left : left + 5])
        ]
        assert found, f"crop {i} is not a window of its image"
        offsets.add(found[0])
    assert len(offsets) > 5


def test_flips_and_quarter_turns_only_rearrange_pixels():
    images = _batch(n=64, h=6, w=6)
    out = BatchTransform(TransformSpec(mean_subtraction="none", flip="hv", rotate90=True), None, torch.device("cpu")).train(images)
    out = (out * 255).round().to(torch.uint8)
    changed = 0
    for i in range(len(images)):
        variants = [torch.rot90(f, k, dims=(-2, -1)) for f in (images[i], images[i].flip(-1)) for k in range(4)]
        assert any(torch.equal(out[i], v) for v in variants)
        changed += not torch.equal(out[i], images[i])
    assert changed > 32  # 15 of 16 combinations change the image


def test_hsv_jitter_keeps_grey_pixels_grey_and_changes_colours():
    grey = torch.full((4, 3, 5, 5), 128, dtype=torch.uint8)
    colour = _batch(n=4, h=5, w=5)
    transform = BatchTransform(TransformSpec(mean_subtraction="none", hsv_jitter=0.3), None, torch.device("cpu"))
    out = transform.train(grey)
    assert torch.allclose(out[:, 0], out[:, 1], atol=1e-4) and torch.allclose(out[:, 1], out[:, 2], atol=1e-4)
    assert not torch.allclose(transform.train(colour), colour.float() / 255)


# --- fine-tuning --------------------------------------------------------------------------


@pytest.mark.parametrize("base_classes,new_classes", [("shapes2", "shapes3"), ("shapes3", "shapes2")])
def test_fine_tune_reinitialises_only_the_classifier(request, tmp_path, base_classes, new_classes):
    base_db, new_db = request.getfixturevalue(base_classes), request.getfixturevalue(new_classes)
    base_events = run_training(make_spec(base_db, tmp_path / "base", epochs=1))
    base_file = tmp_path / "base" / snapshots(base_events)[-1]["filename"]
    events = run_training(make_spec(new_db, tmp_path / "tuned", epochs=1, learning_rate=1e-9, momentum=0.0, pretrained=str(base_file)))
    notices = [e["message"] for e in events if e["event"] == "notice"]
    assert len(notices) == 1 and "classifier.3.weight, classifier.3.bias" in notices[0] and "re-initialised" in notices[0]
    base, tuned = torch.load(base_file, weights_only=True)["model"], _final_weights(tmp_path / "tuned", events)
    torch.testing.assert_close(tuned["features.0.weight"], base["features.0.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(tuned["classifier.1.weight"], base["classifier.1.weight"], rtol=0, atol=1e-6)
    assert tuned["classifier.3.weight"].shape[0] == len((new_db / "labels.txt").read_text().splitlines())


# --- custom code ----------------------------------------------------------------------------

CUSTOM = '''import torch
from torch import nn


def build(input_shape, num_classes):
    channels, height, width = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * width, num_classes))
'''

RUNTIME_ERROR = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(10, n)

    def forward(self, x):
        return self.fc(x.flatten(1))


def build(input_shape, num_classes):
    return Net(num_classes)
'''


def test_custom_code_trains(shapes3, tmp_path):
    events = run_training(make_spec(shapes3, tmp_path, network="custom", custom_code=CUSTOM, epochs=1))
    assert snapshots(events) and all(math.isfinite(v) for _, v in series(events, "train_loss"))


@pytest.mark.parametrize(
    "code,line,words",
    [
        ("import torch\n\ndef build(input_shape, num_classes)\n    return None\n", 3, "SyntaxError"),
        ("def build(input_shape, num_classes):\n    x = 1\n    return undefined_name\n", 3, "NameError"),
        (RUNTIME_ERROR, 11, "mat1 and mat2"),
        ("def helper():\n    pass\n", None, "must define build"),
    ],
)
def test_custom_code_errors_name_the_users_line(shapes3, tmp_path, code, line, words):
    with pytest.raises(TrainingError) as info:
        run_training(make_spec(shapes3, tmp_path, network="custom", custom_code=code, epochs=1))
    message = str(info.value)
    assert words in message
    if line:
        assert message.startswith(f"Line {line} of your network code")


def test_memory_error_gives_batch_advice(shapes3, tmp_path, capsys):
    code = RUNTIME_ERROR.replace("return self.fc(x.flatten(1))", "raise MemoryError()")
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(make_spec(shapes3, tmp_path, network="custom", custom_code=code, batch_size=32)))
    assert cli(["--spec", str(spec_path)]) == 1
    error = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert error["event"] == "error" and "Out of memory with batch size 32" in error["message"]
    assert "batch size 16 and batch accumulation 2" in error["message"]


# --- stopping, resuming --------------------------------------------------------------------


def test_early_stopping_when_validation_loss_stops_improving(shapes3, tmp_path):
    events = run_training(make_spec(shapes3, tmp_path, epochs=20, learning_rate=1e-12, early_stopping_patience=2))
    notices = [e["message"] for e in events if e["event"] == "notice"]
    assert any(n.startswith("Early stopping at epoch 3.00") for n in notices), notices
    assert snapshots(events)[-1]["epoch"] == 3.0 and len(series(events, "val_loss")) == 3


def run_child(spec: dict, spec_path: Path) -> list[dict]:
    """Train in a child process, as the worker runs it (its entry point sets the CPU's
    floating-point mode); returns the events it printed."""
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-m", "models_app.training.train", "--spec", str(spec_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_resume_after_a_kill_continues_exactly_like_an_uninterrupted_run(shapes3, tmp_path):
    """The child is killed after its second snapshot, then resumed from it: the remaining
    points and the final weights equal those of a run that was never interrupted. Every
    run is a real child process, as the worker starts it."""
    extra = {"epochs": 4, "snapshot_interval": 0.6, "flip": "h", "hsv_jitter": 0.1}
    straight = run_child(make_spec(shapes3, tmp_path / "straight", **extra), tmp_path / "straight" / "spec.json")

    spec = make_spec(shapes3, tmp_path / "killed", **extra)
    spec_path = tmp_path / "killed" / "spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "models_app.training.train", "--spec", str(spec_path)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True,
    )
    seen = []
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "snapshot":
            seen.append(event)
            if len(seen) == 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
    proc.wait()
    assert [s["epoch"] for s in seen] == [0.6, 1.2]  # 3 iterations per 0.6 epoch

    resumed = run_child({**spec, "resume_from": str(tmp_path / "killed" / seen[-1]["filename"])}, tmp_path / "resumed.json")
    cut = seen[-1]["iteration"]
    for name in ("train_loss", "lr", "val_loss", "val_accuracy"):
        assert series(resumed, name) == [p for p in series(straight, name) if p[0] > cut], name
    a, b = _final_weights(tmp_path / "killed", resumed), _final_weights(tmp_path / "straight", straight)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_in_memory_split_moves_to_a_device_only_within_budget(shapes3):
    from models_app.training.data import Split

    split = Split(shapes3 / "train_db", cache_bytes=1 << 30, workers=0)
    assert split.in_memory and split.images.shape == (45, 3, 28, 28)
    assert not split.move_to(torch.device("cpu"), budget_bytes=45 * 3 * 28 * 28 - 1)
    assert split.move_to(torch.device("cpu"), budget_bytes=45 * 3 * 28 * 28)
    (images, labels), = split.batches([torch.tensor([3, 1])])
    assert torch.equal(images, split.images[[3, 1]]) and labels.tolist() == split.labels[[3, 1]].tolist()
    streamed = Split(shapes3 / "train_db", cache_bytes=0, workers=0)
    assert not streamed.in_memory and not streamed.move_to(torch.device("cpu"), budget_bytes=1 << 30)
    (s_images, s_labels), = streamed.batches([torch.tensor([3, 1])])
    assert torch.equal(s_images, images) and torch.equal(s_labels, labels)


def test_raw_records_are_loaded_without_loader_processes_and_encoded_ones_with_them(shapes3, tmp_path):
    """Into memory, a raw record is one copy: loader processes would cost more than they
    save there. Streaming keeps them (they read ahead while the device trains)."""
    from datasets.lmdb_store import read_meta
    from models_app.training.data import Split

    assert read_meta(shapes3 / "train_db")["encoding"] == "png"
    encoded = Split(shapes3 / "train_db", cache_bytes=1 << 30, workers=2)
    raw_db = _build(tmp_path / "raw", ("circle", "square"), encoding="none")
    raw = Split(raw_db / "train_db", cache_bytes=1 << 30, workers=2)
    assert encoded.preload_workers == 2 and raw.preload_workers == 0 and raw.in_memory
    streamed = Split(raw_db / "train_db", cache_bytes=0, workers=2)
    assert streamed.workers == 2 and not streamed.in_memory
    (images, labels), = streamed.batches([torch.tensor([2, 0])])
    assert torch.equal(images, raw.images[[2, 0]]) and torch.equal(labels, raw.labels[[2, 0]])


def test_a_snapshot_without_optimizer_state_cannot_be_resumed(shapes3, tmp_path):
    events = run_training(make_spec(shapes3, tmp_path / "first", epochs=1))
    state = torch.load(tmp_path / "first" / snapshots(events)[-1]["filename"], weights_only=True)
    old = tmp_path / "old.pt"
    torch.save({k: state[k] for k in ("model", "epoch", "network", "num_classes", "input_shape")}, old)
    with pytest.raises(TrainingError, match="cannot be resumed; clone the model"):
        run_training(make_spec(shapes3, tmp_path / "again", epochs=2, resume_from=str(old)))


def test_the_spec_is_typed_and_refuses_unknown_fields(tmp_path):
    """One typed spec on both sides: the model's defaults are the spec's, a spec round-trips
    through its JSON, and a misspelt field is refused by the child, not silently defaulted."""
    from models_app.models import TrainedModel
    from models_app.training.spec import DEFAULTS

    for name in ("epochs", "batch_size", "learning_rate", "lr_steps", "val_interval", "network", "precision"):
        assert TrainedModel._meta.get_field(name).default == getattr(DEFAULTS, name), name
    spec = TrainSpec(num_classes=3, input_shape=(1, 28, 28), train_db="/x", output_dir="/y", epochs=2.5, crop_size=24)
    assert TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="unknown spec field"):
        TrainSpec.from_dict({"learnig_rate": 0.1})
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**spec.to_dict(), "learnig_rate": 0.1}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli(["--spec", str(path)]) == 1
    error = json.loads(out.getvalue().splitlines()[-1])
    assert error["event"] == "error" and "unknown spec field(s): learnig_rate" in error["message"]


def test_a_full_disk_while_snapshotting_says_so_and_keeps_the_previous_snapshot(shapes3, tmp_path):
    """A real full disk (the CI machines run as root, so a tmpfs can be mounted): the run's
    folder on a 6 MiB tmpfs holds the first snapshots of LeNet but not all of them. The run fails with what to do, the snapshots written before
    are intact and loadable, and no half-written file is left."""
    out = tmp_path / "small"
    out.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(out)], check=True)
    try:
        spec = make_spec(shapes3, out, epochs=8)
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run(
            [sys.executable, "-m", "models_app.training.train", "--spec", str(tmp_path / "spec.json")],
            capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, timeout=300,
        )
        events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        errors = [e["message"] for e in events if e["event"] == "error"]
        assert proc.returncode == 1 and errors, proc.stderr[-2000:]
        assert "The disk may be full: free some space, then resume the model from its last snapshot." in errors[-1]
        written = [e["filename"] for e in events if e["event"] == "snapshot"]
        assert written and sorted(p.name for p in out.glob("*.pt")) == sorted(written)
        assert not list(out.glob("*.tmp"))
        state = torch.load(out / written[-1], weights_only=False)
        assert state["iteration"] == max(e["iteration"] for e in events if e["event"] == "snapshot")
    finally:
        subprocess.run(["umount", str(out)], check=True)
