"""`digits`: the command line of DIGITS-NG, on the REST API (digits_cli/client.py).

    digits login --url http://gpu-box:8000
    digits datasets create shapes --folder /data/shapes --width 28 --height 28 --wait
    digits models create lenet --dataset 1 --network lenet --epochs 10 --follow
    digits models evaluate 2 --split val --wait
    digits models download 2 --format onnx -o .

Every command takes --json (machine-readable output) and exits non-zero when something
failed: a refused request, or a job that ended in error or was aborted.
"""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from .client import FINISHED, ApiError, Client, save_config

app = typer.Typer(help="DIGITS-NG from the command line.", no_args_is_help=True, pretty_exceptions_enable=False)
datasets_app = typer.Typer(help="Datasets: create, list, show, wait, delete.", no_args_is_help=True)
models_app = typer.Typer(help="Models: create, follow, evaluate, export, download.", no_args_is_help=True)
queue_app = typer.Typer(help="The device queue (admins steer it).", no_args_is_help=True)
sweeps_app = typer.Typer(help="Sweeps: many models over a search space (grid, random, Optuna).", no_args_is_help=True)
s3_app = typer.Typer(help="S3-compatible object stores: upload a folder, manage your credentials.", no_args_is_help=True)
credentials_app = typer.Typer(help="Your S3 credentials on the server (secrets stored encrypted, never shown).",
                              no_args_is_help=True)
s3_app.add_typer(credentials_app, name="credentials")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(queue_app, name="queue")
app.add_typer(sweeps_app, name="sweeps")
app.add_typer(s3_app, name="s3")

out = Console()
err = Console(stderr=True)
JSON = typer.Option(False, "--json", help="Print JSON instead of tables.")
OPTION = typer.Option(None, "--option", "-o", help="Any other field as KEY=VALUE (repeat it); the server checks it.")


def api() -> Client:
    return Client.from_env()


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def emit(data: Any, as_json: bool) -> bool:
    """Print JSON when asked; True when it did (the caller then prints nothing else)."""
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    return as_json


def parse_options(options: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON when they parse (numbers, true, null, lists)."""
    fields: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--option takes KEY=VALUE, got {item!r}.", 2)
        try:
            fields[key.strip()] = json.loads(value)
        except ValueError:
            fields[key.strip()] = value
    return fields


def drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def job_table(rows: list[dict[str, Any]], extra: list[tuple[str, Any]]) -> Table:
    table = Table(show_lines=False)
    for name in ("id", "name", "owner", "status", "progress", *[e[0] for e in extra]):
        table.add_column(name)
    for row in rows:
        job = row["job"]
        table.add_row(
            str(row["id"]), job["name"], job["owner"], status_text(job["status"]), f"{job['progress'] * 100:.0f}%",
            *[str(getter(row)) for _, getter in extra],
        )
    return table


def status_text(status: str) -> str:
    colour = {"done": "green", "error": "red", "aborted": "yellow", "timed_out": "yellow", "running": "cyan"}.get(status, "white")
    return f"[{colour}]{status}[/{colour}]"


def finish(data: dict[str, Any], as_json: bool) -> NoReturn:
    """Report a finished job; the exit status is its outcome."""
    job = data["job"]
    if not emit(data, as_json):
        line = f"{job['name']} (#{data['id']}): {job['status']}"
        if job.get("error"):
            line += f": {job['error']}"
        (out if job["status"] == "done" else err).print(line, highlight=False)
    raise typer.Exit(0 if job["status"] == "done" else 1)


def wait_with_bar(client: Client, job_id: int, kind: str | None, as_json: bool) -> NoReturn:
    if as_json:
        finish(client.wait(job_id, kind=kind), True)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task(f"#{job_id}", total=1.0)

        def update(data: dict[str, Any]) -> None:
            job = data["job"]
            bar.update(task, completed=job["progress"] or 0, description=f"#{job_id} {job['name']} · {job['status']}")

        data = client.wait(job_id, kind=kind, on_update=update)
    finish(data, False)


@app.callback()
def main_options() -> None:
    """DIGITS_URL and DIGITS_TOKEN configure the server and the login (or `digits login`)."""


@app.command()
def login(
    url: str = typer.Option(None, help="The server, e.g. http://gpu-box:8000 (default: DIGITS_URL)."),
    username: str = typer.Option(..., prompt=True),
    password: str = typer.Option(..., prompt=True, hide_input=True),
    as_json: bool = JSON,
) -> None:
    """Get an API token and save it (with the URL) for the next commands."""
    client = Client(url=url, token="")
    try:
        token = client.obtain_token(username, password)
    except ApiError as exc:
        fail(f"login failed: {exc}")
    path = save_config(client.url, token)
    if not emit({"url": client.url, "config": str(path)}, as_json):
        out.print(f"Logged in to {client.url} as {username}; saved to {path}.")


# -- datasets ----------------------------------------------------------------------------


@datasets_app.command("create")
def dataset_create(
    name: str,
    folder: str = typer.Option(None, help="A server folder of class subfolders (segmentation: of images)."),
    dataset_task: str = typer.Option(None, "--task", help="classification, segmentation or detection (default: segmentation "
                                     "with --label-folder, detection with --annotations-file)."),
    label_folder: str = typer.Option(None, help="Segmentation: a server folder of label images of the same names; "
                                     "detection: of KITTI label files."),
    annotations_file: str = typer.Option(None, help="Detection: a server COCO JSON file (instead of --label-folder)."),
    class_list: str = typer.Option(None, help="Segmentation: a server file, line i `name [r g b]` of class i."),
    train_list: str = typer.Option(None, help="A server text list of `path label` lines (with --labels-file)."),
    val_list: str = typer.Option(None),
    labels_file: str = typer.Option(None),
    image_folder: str = typer.Option(None, help="Relative list paths are under it."),
    archive: Path = typer.Option(None, exists=True, dir_okay=False, help="A local .zip/.tar(.gz) of class folders, uploaded with progress."),
    s3_credential: str = typer.Option(None, help="S3 source: the name of one of your credentials (`digits s3 credentials`)."),
    bucket: str = typer.Option(None, help="S3 source: the bucket."),
    prefix: str = typer.Option(None, help="S3 source: class subfolders under this prefix."),
    val_prefix: str = typer.Option(None, help="S3 source: a separate validation prefix."),
    test_prefix: str = typer.Option(None, help="S3 source: a separate test prefix."),
    width: int = typer.Option(None, help="Image width (default 256)."),
    height: int = typer.Option(None, help="Image height (default 256)."),
    mode: str = typer.Option(None, help="color or grayscale."),
    resize_mode: str = typer.Option(None, help="squash, crop, fill or half_crop."),
    encoding: str = typer.Option(None, help="png, jpeg or none."),
    val_percent: int = typer.Option(None),
    test_percent: int = typer.Option(None),
    group: str = typer.Option(None),
    option: list[str] = OPTION,
    wait: bool = typer.Option(False, "--wait", help="Wait until it is built (exit status: its outcome)."),
    as_json: bool = JSON,
) -> None:
    """Create a dataset from a server folder, server text lists, a local archive, or an S3
    bucket (--s3-credential, --bucket, --prefix); with --label-folder and --class-list, a
    segmentation dataset."""
    client = api()
    fields = drop_none({
        "name": name, "folder": folder, "label_folder": label_folder, "class_list": class_list,
        "annotations_file": annotations_file, "train_list": train_list, "val_list": val_list, "labels_file": labels_file,
        "image_folder": image_folder, "image_width": width, "image_height": height, "image_mode": mode,
        "resize_mode": resize_mode, "encoding": encoding, "val_percent": val_percent, "test_percent": test_percent, "group": group,
    })
    if train_list:
        fields["source"] = "textfile"
    if bucket or s3_credential:
        fields.update(drop_none({"source": "s3", "s3_credential": s3_credential, "s3_bucket": bucket, "s3_prefix": prefix,
                                 "s3_val_prefix": val_prefix, "s3_test_prefix": test_prefix}))
    if dataset_task:
        fields["task"] = dataset_task
    elif annotations_file:
        fields["task"] = "detection"
    elif label_folder or class_list:
        fields["task"] = "segmentation"
    fields.update(parse_options(option))
    try:
        if archive is not None:
            with Progress(TextColumn(f"uploading {archive.name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          TimeRemainingColumn(), console=err, transient=True, disable=as_json) as bar:
                task = bar.add_task("upload", total=archive.stat().st_size)
                fields["upload"] = client.upload(archive, lambda done, total: bar.update(task, completed=done))
            fields["source"] = "upload"
        dataset = client.dataset_create(**fields)
    except ApiError as exc:
        fail(str(exc))
    if wait:
        wait_with_bar(client, dataset["id"], "dataset", as_json)
    if not emit(dataset, as_json):
        out.print(f"Dataset #{dataset['id']} {dataset['job']['name']}: {dataset['job']['status']}.")


@datasets_app.command("list")
def dataset_list(
    status: str = typer.Option(None), owner: str = typer.Option(None), group: str = typer.Option(None),
    search: str = typer.Option(None, help="In names."), limit: int = typer.Option(50), as_json: bool = JSON,
) -> None:
    """Datasets, newest first."""
    try:
        rows = list(api().datasets(limit, status=status, owner=owner, group=group, search=search))
    except ApiError as exc:
        fail(str(exc))
    if not emit(rows, as_json):
        out.print(job_table(rows, [
            ("images", lambda r: sum((r.get("counts") or {}).values())), ("classes", lambda r: len(r.get("labels") or [])),
            ("size", lambda r: f"{r['image_width']}x{r['image_height']} {r['image_mode']}"),
        ]))


@datasets_app.command("show")
def dataset_show(dataset_id: int, as_json: bool = JSON) -> None:
    """One dataset: its options, counts and labels."""
    try:
        data = api().dataset(dataset_id)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data, as_json):
        job = data["job"]
        out.print(f"[bold]{job['name']}[/bold] (#{data['id']}) · {status_text(job['status'])} · {job['owner']}")
        out.print(f"{data['image_width']}x{data['image_height']} {data['image_mode']}, {data['resize_mode']}, {data['encoding']}")
        out.print(f"counts: {data.get('counts')}; labels: {', '.join(data.get('labels') or [])}")
        if job.get("error"):
            err.print(job["error"])


@datasets_app.command("wait")
def dataset_wait(dataset_id: int, as_json: bool = JSON) -> None:
    """Wait until the dataset is built (exit status: its outcome)."""
    try:
        wait_with_bar(api(), dataset_id, "dataset", as_json)
    except ApiError as exc:
        fail(str(exc))


@datasets_app.command("delete")
def dataset_delete(dataset_id: int, as_json: bool = JSON) -> None:
    try:
        api().dataset_delete(dataset_id)
    except ApiError as exc:
        fail(str(exc))
    if not emit({"deleted": dataset_id}, as_json):
        out.print(f"Dataset #{dataset_id} deleted.")


# -- models ------------------------------------------------------------------------------


def follow(client: Client, model_id: int, as_json: bool) -> NoReturn:
    """Stream a model's progress and metrics until it finishes; exit with its outcome."""
    after: int | None = None
    latest: dict[str, float] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeRemainingColumn(),
                  console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"#{model_id}", total=1.0)
        while True:
            data = client.model(model_id)
            job = data["job"]
            points = client.metrics(model_id, after=after)
            newest = after
            for name, series in points.items():
                for point in series:
                    newest = max(newest or 0, point["iteration"])
                    latest[name] = point["value"]
                    if as_json:
                        sys.stdout.write(json.dumps({"metric": name, **point}) + "\n")
                    elif name == "val_loss":
                        acc = next((p["value"] for p in points.get("val_accuracy", []) if p["iteration"] == point["iteration"]), None)
                        bar.console.print(f"epoch {point['epoch']:>7.2f}  val loss {point['value']:.4f}  val accuracy {pct(acc)}",
                                          highlight=False)
            after = newest
            loss = f" · loss {latest['train_loss']:.4f}" if "train_loss" in latest else ""
            bar.update(task, completed=job["progress"] or 0, description=f"#{model_id} {job['name']} · {job['status']}{loss}")
            if job["status"] in FINISHED:
                break
            time.sleep(2)
    if as_json:
        sys.stdout.write(json.dumps({"id": model_id, "status": job["status"], "error": job.get("error", "")}) + "\n")
        raise typer.Exit(0 if job["status"] == "done" else 1)
    finish(data, False)


@models_app.command("create")
def model_create(
    name: str,
    dataset: int = typer.Option(..., help="The dataset's id."),
    network: str = typer.Option(None, help="lenet, alexnet, googlenet, resnet18, resnet50, mobilenet_v3, efficientnet_b0, vit_b_16, custom."),
    custom_code: Path = typer.Option(None, exists=True, dir_okay=False, help="A .py file with build(input_shape, num_classes)."),
    base_model: int = typer.Option(None, help="Fine-tune from this model..."),
    base_epoch: float = typer.Option(None, help="...from the snapshot of this epoch."),
    epochs: float = typer.Option(None),
    batch_size: int = typer.Option(None),
    solver: str = typer.Option(None, help="sgd, nesterov, adagrad, rmsprop, adadelta, adam, adamw."),
    learning_rate: float = typer.Option(None, "--learning-rate", "--lr"),
    lr_policy: str = typer.Option(None, help="fixed, step, multistep, exp, inv, poly, sigmoid, cosine."),
    crop_size: int = typer.Option(None),
    devices: int = typer.Option(None, help="Train on this many devices (DDP)."),
    priority: str = typer.Option(None, help="low, normal, high (admins: urgent)."),
    time_limit: float = typer.Option(None, "--time-limit", help="Hours per run: it then stops with a snapshot (resumable)."),
    preemptible: bool = typer.Option(False, "--preemptible", help="Urgent jobs may take its devices; it resumes by itself."),
    group: str = typer.Option(None),
    option: list[str] = OPTION,
    follow_it: bool = typer.Option(False, "--follow", "-f", help="Stream progress and metrics; exit with the outcome."),
    as_json: bool = JSON,
) -> None:
    """Create (and queue) a model; every field of the API with -o KEY=VALUE."""
    client = api()
    fields = drop_none({
        "name": name, "dataset": dataset, "network": network, "base_model": base_model, "base_epoch": base_epoch,
        "epochs": epochs, "batch_size": batch_size, "solver": solver, "learning_rate": learning_rate, "lr_policy": lr_policy,
        "crop_size": crop_size, "devices": devices, "priority": priority, "group": group,
        "custom_code": custom_code.read_text() if custom_code else None, "time_limit_hours": time_limit,
        "preemptible": preemptible or None,
    })
    if custom_code and not network:
        fields["network"] = "custom"
    fields.update(parse_options(option))
    try:
        model = client.model_create(**fields)
        if follow_it:
            if not as_json:
                err.print(f"Model #{model['id']} {model['job']['name']} queued.", highlight=False)
            follow(client, model["id"], as_json)
    except ApiError as exc:
        fail(str(exc))
    if not emit(model, as_json):
        out.print(f"Model #{model['id']} {model['job']['name']}: {model['job']['status']}.")


@models_app.command("list")
def model_list(
    status: str = typer.Option(None), owner: str = typer.Option(None), group: str = typer.Option(None),
    dataset: int = typer.Option(None), network: str = typer.Option(None), search: str = typer.Option(None, help="In names."),
    limit: int = typer.Option(50), as_json: bool = JSON,
) -> None:
    """Models, newest first."""
    try:
        rows = list(api().models(limit, status=status, owner=owner, group=group, dataset=dataset, network=network, search=search))
    except ApiError as exc:
        fail(str(exc))
    if not emit(rows, as_json):
        def best(row: dict[str, Any]) -> str:
            values = [s["val_accuracy"] for s in row.get("snapshots", []) if s.get("val_accuracy") is not None]
            return pct(max(values)) if values else "—"

        out.print(job_table(rows, [("network", lambda r: r["network"]), ("dataset", lambda r: r["dataset"]),
                                   ("epochs", lambda r: f"{r['epochs']:g}"), ("best val. acc.", best)]))


@models_app.command("show")
def model_show(model_id: int, as_json: bool = JSON) -> None:
    """One model: parameters, snapshots and their validation figures."""
    try:
        data = api().model(model_id)
    except ApiError as exc:
        fail(str(exc))
    if emit(data, as_json):
        return
    job = data["job"]
    out.print(f"[bold]{job['name']}[/bold] (#{data['id']}) · {status_text(job['status'])} · {job['owner']} · dataset {data['dataset']}")
    out.print(f"{data['network']}, {data['solver']} lr {data['learning_rate']:g} ({data['lr_policy']}), "
              f"{data['epochs']:g} epochs, batch {data['batch_size']}", highlight=False)
    table = Table("epoch", "val. loss", "val. top-1", "val. top-5")
    for s in data["snapshots"]:
        table.add_row(f"{s['epoch']:g}", "—" if s["val_loss"] is None else f"{s['val_loss']:.4f}", pct(s["val_accuracy"]), pct(s["val_top5"]))
    out.print(table)
    for notice in data.get("notices", []):
        out.print(f"[dim]{notice}[/dim]")
    if job.get("error"):
        err.print(job["error"])


@models_app.command("follow")
def model_follow(model_id: int, as_json: bool = JSON) -> None:
    """Stream a model's progress and validation metrics until it ends."""
    try:
        follow(api(), model_id, as_json)
    except ApiError as exc:
        fail(str(exc))


@models_app.command("wait")
def model_wait(model_id: int, as_json: bool = JSON) -> None:
    """Wait until the model finishes (exit status: its outcome)."""
    try:
        wait_with_bar(api(), model_id, "model", as_json)
    except ApiError as exc:
        fail(str(exc))


@models_app.command("logs")
def model_logs(job_id: int, follow_it: bool = typer.Option(False, "--follow", "-f", help="Keep printing as it grows.")) -> None:
    """A job's raw log (any job: a model, a dataset, an evaluation)."""
    client = api()
    offset = 0
    try:
        while True:
            try:
                text, offset = client.log(job_id, offset)
            except ApiError as exc:
                if exc.status != 404 or not follow_it:  # 404: no log yet, the job has not started
                    raise
                text = ""
            sys.stdout.write(text)
            sys.stdout.flush()
            if not follow_it:
                return
            if client.get(f"/api/jobs/{job_id}/")["status"] in FINISHED:
                text, offset = client.log(job_id, offset)
                sys.stdout.write(text)
                return
            time.sleep(1)
    except ApiError as exc:
        fail(str(exc))


def _simple(action: str, model_id: int, as_json: bool, **fields: Any) -> None:
    try:
        data = api().model_action(model_id, action, **fields)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data or {"id": model_id, "action": action}, as_json):
        if action == "clone" and data:
            out.print(f"Cloned into model #{data['id']} {data['job']['name']}.")
        else:
            out.print(f"Model #{model_id}: {action} requested.")


@models_app.command("abort")
def model_abort(model_id: int, as_json: bool = JSON) -> None:
    _simple("abort", model_id, as_json)


@models_app.command("resume")
def model_resume(model_id: int, as_json: bool = JSON) -> None:
    _simple("resume", model_id, as_json)


@models_app.command("clone")
def model_clone(model_id: int, name: str = typer.Option(None), option: list[str] = OPTION, as_json: bool = JSON) -> None:
    """Clone a model (the same parameters; -o KEY=VALUE changes some)."""
    _simple("clone", model_id, as_json, **drop_none({"name": name}), **parse_options(option))


@models_app.command("delete")
def model_delete(model_id: int, as_json: bool = JSON) -> None:
    try:
        api().model_delete(model_id)
    except ApiError as exc:
        fail(str(exc))
    if not emit({"deleted": model_id}, as_json):
        out.print(f"Model #{model_id} deleted.")


@models_app.command("classify")
def model_classify(model_id: int, image: Path = typer.Argument(..., exists=True, dir_okay=False),
                   epoch: float = typer.Option(None), as_json: bool = JSON) -> None:
    """Classify one image: top-5."""
    try:
        data = api().classify(model_id, image, epoch=epoch)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data, as_json):
        table = Table("#", "label", "probability", title=f"{image.name} · epoch {data['epoch']:g}")
        for n, p in enumerate(data["predictions"], 1):
            table.add_row(str(n), p["label"], f"{p['probability'] * 100:.2f}%")
        out.print(table)


@models_app.command("evaluate")
def model_evaluate(
    model_id: int,
    split: str = typer.Option(None, help="train, val or test."),
    image_list: Path = typer.Option(None, exists=True, dir_okay=False, help="A local text list of `path [label]` lines (paths on the server)."),
    list_path: str = typer.Option(None, help="A list file on the server."),
    image_folder: str = typer.Option(None, help="The list's relative paths are under this server folder."),
    images: list[Path] = typer.Option(None, "--image", exists=True, dir_okay=False, help="Local images or archives to upload (repeat)."),
    epoch: float = typer.Option(None),
    wait: bool = typer.Option(False, "--wait", help="Wait and print the summary (exit status: its outcome)."),
    as_json: bool = JSON,
) -> None:
    """Evaluate on a split, or classify many from a list or uploaded images."""
    client = api()
    try:
        evaluation = client.evaluate(
            model_id, epoch=epoch, split=split, image_list=image_list.read_text() if image_list else None,
            list_path=list_path, image_folder=image_folder or "", images=list(images or []),
        )
        if not wait:
            if not emit(evaluation, as_json):
                out.print(f"Evaluation #{evaluation['id']} queued.")
            return
        data = client.wait(evaluation["id"], kind="evaluation")
    except ApiError as exc:
        fail(str(exc))
    if not as_json and data["job"]["status"] == "done":
        m = data["metrics"]
        if m.get("task") == "segmentation":
            out.print(f"{m['images']} images: mean IoU {pct(m['miou'])}, pixel accuracy {pct(m['pixel_accuracy'])}, "
                      f"{m['images_below_half']} images under 50 %")
        elif m.get("task") == "detection":
            out.print(f"{m['images']} images: mAP@0.5 {pct(m['map50'])}, mAP@0.5:0.95 {pct(m['map'])}; {m['found']} objects "
                      f"found, {m['missed']} missed, {m['false_alarms']} false alarms")
        else:
            out.print(f"{m['images']} images ({m.get('labeled', m['images'])} with ground truth): top-1 {pct(m['top1'])}, "
                      f"top-5 {pct(m['top5'])}")
        for problem in m.get("problems", [])[:20]:
            err.print(f"  line {problem['line'] or '-'}: {problem['text']}: {problem['reason']}", highlight=False)
    finish(data, as_json)


@models_app.command("export")
def model_export(model_id: int, epoch: float = typer.Option(None), as_json: bool = JSON) -> None:
    """Export to ONNX and torch.export, checked against PyTorch; print the checks."""
    client = api()
    try:
        export = client.export(model_id, epoch)
        data = client.wait(export["id"], kind="export")
    except ApiError as exc:
        fail(str(exc))
    if not as_json:
        table = Table("format", "check", "max abs diff", "top-1 agreement", "p50 ms", "error")
        for c in data["checks"]:
            table.add_row(c["format"], c["status"], "—" if c["max_abs_diff"] is None else f"{c['max_abs_diff']:.2e}",
                          pct(c["top1_agreement"]), "—" if c["p50_ms"] is None else f"{c['p50_ms']:.2f}", c["error"][:80])
        out.print(table)
    finish(data, as_json)


@models_app.command("download")
def model_download(
    model_id: int,
    fmt: str = typer.Option("archive", "--format", help="archive, onnx, pt2 or triton."),
    epoch: float = typer.Option(None),
    output: Path = typer.Option(Path("."), "--output", "-o", help="A folder, or the file to write."),
    as_json: bool = JSON,
) -> None:
    """Download a snapshot (the archive, or a checked export)."""
    try:
        path = api().download(model_id, output, fmt=fmt, epoch=epoch)
    except ApiError as exc:
        fail(str(exc))
    if not emit({"path": str(path), "bytes": path.stat().st_size}, as_json):
        out.print(f"Saved {path} ({path.stat().st_size:,} bytes).")


# -- sweeps ------------------------------------------------------------------------------


def sweep_table(data: dict[str, Any]) -> Table:
    params = list(data["space"])
    table = Table("#", *params, "state", data["metric"], "epoch", "model",
                  title=f"{data['name']} (#{data['id']}) · {data['status']} · {data['mode']}")
    scored = sorted((t for t in data["trials"] if t["value"] is not None), key=lambda t: t["value"],
                    reverse=data["metric"] == "val_accuracy")
    rest = [t for t in data["trials"] if t["value"] is None]
    best = (data.get("best") or {}).get("number")
    for t in scored + rest:
        table.add_row(f"{t['number']}{' ★' if t['number'] == best else ''}", *[str(t["params"].get(p, "")) for p in params], t["state"],
                      "" if t["value"] is None else f"{t['value']:.4f}", "" if t["best_epoch"] is None else f"{t['best_epoch']:g}",
                      str(t["model"] or ""))
    return table


@sweeps_app.command("create")
def sweep_create(
    name: str,
    dataset: int = typer.Option(..., help="The dataset's id."),
    param: list[str] = typer.Option(..., "--param", "-p",
                                    help="A swept option: 'learning_rate=0.1,0.01' or 'weight_decay=1e-6..1e-2 log' (repeat)."),
    mode: str = typer.Option("grid", help="grid, random or optuna."),
    max_trials: int = typer.Option(16), max_concurrent: int = typer.Option(2),
    metric: str = typer.Option("val_accuracy", help="val_accuracy (highest) or val_loss (lowest)."),
    pruner: str = typer.Option("none", help="none, median or hyperband."),
    seed: int = typer.Option(0), group: str = typer.Option(None),
    option: list[str] = OPTION,
    wait: bool = typer.Option(False, "--wait", help="Wait until it finishes and print its trials."),
    as_json: bool = JSON,
) -> None:
    """Start a sweep; the other model options (-o epochs=5 ...) are shared by every trial."""
    client = api()
    try:
        data = client.sweep_create(**drop_none({
            "name": name, "dataset": dataset, "mode": mode, "space_text": "\n".join(param), "max_trials": max_trials,
            "max_concurrent": max_concurrent, "metric": metric, "pruner": pruner, "seed": seed, "group": group,
            "base": parse_options(option),
        }))
        if wait:
            data = _sweep_wait(client, data["id"], as_json)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data, as_json):
        out.print(sweep_table(data) if wait else f"Sweep #{data['id']} {data['name']}: {len(data['trials'])} trial(s) started.")
    if wait and data["status"] != "done":
        raise typer.Exit(1)


def _sweep_wait(client: Client, sweep_id: int, as_json: bool) -> dict[str, Any]:
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.0f}/{task.total:.0f} trials"),
                  console=err, transient=True, disable=as_json) as bar:
        task = bar.add_task(f"sweep #{sweep_id}", total=1)

        def update(data: dict[str, Any]) -> None:
            finished = sum(n for state, n in data["counts"].items() if state != "running")
            best = data.get("best")
            note = f" · best #{best['number']} {best['value']:.4f}" if best else ""
            bar.update(task, total=data["max_trials"], completed=finished, description=f"{data['name']}{note}")

        return client.sweep_wait(sweep_id, on_update=update)


@sweeps_app.command("list")
def sweep_list_cmd(limit: int = typer.Option(50), as_json: bool = JSON) -> None:
    try:
        rows = list(api().sweeps(limit))
    except ApiError as exc:
        fail(str(exc))
    if not emit(rows, as_json):
        table = Table("id", "name", "owner", "status", "mode", "trials", "best")
        for r in rows:
            best = r.get("best")
            table.add_row(str(r["id"]), r["name"], r["owner"], status_text(r["status"]), r["mode"],
                          f"{len(r['trials'])}/{r['max_trials']}", f"#{best['number']} {best['value']:.4f}" if best else "—")
        out.print(table)


@sweeps_app.command("show")
def sweep_show(sweep_id: int, as_json: bool = JSON) -> None:
    """A sweep's trials, best first."""
    try:
        data = api().sweep(sweep_id)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data, as_json):
        out.print(sweep_table(data))


@sweeps_app.command("wait")
def sweep_wait_cmd(sweep_id: int, as_json: bool = JSON) -> None:
    """Wait until the sweep finishes (exit status 0 when done)."""
    try:
        data = _sweep_wait(api(), sweep_id, as_json)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data, as_json):
        out.print(sweep_table(data))
    raise typer.Exit(0 if data["status"] == "done" else 1)


@sweeps_app.command("abort")
def sweep_abort_cmd(sweep_id: int, as_json: bool = JSON) -> None:
    """Stop the sweep and every unfinished trial."""
    try:
        data = api().sweep_abort(sweep_id)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data, as_json):
        out.print(f"Sweep #{sweep_id} aborted.")


# -- the queue (admins) ------------------------------------------------------------------


def starts_in(when: str | None) -> str:
    """An estimated start from the API ("2026-11-29T14:05:00Z"): "in ~12 min (14:05)"."""
    if not when:
        return "unknown"
    start = datetime.fromisoformat(when.replace("Z", "+00:00"))
    minutes = (start - datetime.now(timezone.utc)).total_seconds() / 60
    local = start.astimezone().strftime("%H:%M")
    return "now" if minutes < 1 else f"in ~{minutes:.0f} min ({local})" if minutes < 120 else f"in ~{minutes / 60:.1f} h ({local})"


@queue_app.command("list")
def queue_list(as_json: bool = JSON) -> None:
    """The queue in order, with why each job waits."""
    try:
        rows = api().queue()
    except ApiError as exc:
        fail(str(exc))
    if not emit(rows, as_json):
        table = Table("#", "job", "name", "owner", "priority", "devices", "held", "waiting", "expected start", "reason")
        for r in rows:
            table.add_row(str(r["position"]), str(r["job"]), r["name"], r["owner"], r["priority"], str(r["devices"]),
                          "yes" if r["held"] else "", f"{r['waited_seconds']:.0f} s", starts_in(r.get("estimated_start")),
                          r["reason"])
        out.print(table)


@queue_app.command("move")
def queue_move(job_id: int, where: str = typer.Argument(..., help="up, down, top, bottom, hold, release, cancel"),
               as_json: bool = JSON) -> None:
    """Move a queued job (admins), hold or release it, or cancel it."""
    try:
        api().queue_action(job_id, where)
    except ApiError as exc:
        fail(str(exc))
    if not emit({"id": job_id, "action": where}, as_json):
        out.print(f"Job #{job_id}: {where}.")


@queue_app.command("priority")
def queue_priority(job_id: int, priority: str, as_json: bool = JSON) -> None:
    try:
        api().queue_action(job_id, "priority", priority)
    except ApiError as exc:
        fail(str(exc))
    if not emit({"id": job_id, "priority": priority}, as_json):
        out.print(f"Job #{job_id}: priority {priority}.")


@queue_app.command("devices")
def queue_devices(as_json: bool = JSON) -> None:
    """The devices: state, job, utilisation."""
    try:
        rows = api().devices()
    except ApiError as exc:
        fail(str(exc))
    if not emit(rows, as_json):
        table = Table("id", "device", "state", "enabled", "job")
        for d in rows:
            table.add_row(str(d["id"]), d["label"], d["state"], "yes" if d["enabled"] else "drained",
                          f"#{d['job']['id']} {d['job']['name']}" if d["job"] else "")
        out.print(table)


@queue_app.command("drain")
def queue_drain(device_id: int, undo: bool = typer.Option(False, "--undo", help="Enable it again."), as_json: bool = JSON) -> None:
    """Drain a device (admins): its job finishes, nothing new starts on it."""
    try:
        data = api().device_enable(device_id, undo)
    except ApiError as exc:
        fail(str(exc))
    if not emit(data, as_json):
        out.print(f"Device {data['label']}: {'enabled' if data['enabled'] else 'drained'}.")




@s3_app.command("upload")
def s3_upload(
    folder: Path = typer.Argument(..., exists=True, file_okay=False, help="A local folder (e.g. of class subfolders)."),
    bucket: str = typer.Option(..., help="The bucket (it must exist)."),
    prefix: str = typer.Option("", help="Where under the bucket: each file goes to PREFIX/<its path under FOLDER>."),
    endpoint: str = typer.Option(None, help="The S3 endpoint URL (default: $AWS_ENDPOINT_URL, else AWS)."),
    access_key_id: str = typer.Option(None, help="Default: $AWS_ACCESS_KEY_ID."),
    region: str = typer.Option(None),
    threads: int = typer.Option(16, help="Files sent at once."),
    as_json: bool = JSON,
) -> None:
    """Put a local folder into a bucket (DIGITS' upload_s3_data.py): train/<class>/... under
    a prefix makes an S3 dataset source. Files already there with the same size are kept,
    so running it again resumes an interrupted upload. The secret key comes from
    $AWS_SECRET_ACCESS_KEY (or is asked for, not echoed): never from the command line,
    where the shell's history would keep it."""
    from .s3upload import UploadError, client, from_environment, normal_prefix, upload_folder

    endpoint, key, secret, region = from_environment(endpoint, access_key_id, region)
    if not key:
        fail("Give --access-key-id, or set AWS_ACCESS_KEY_ID.")
    secret = secret or typer.prompt("Secret access key", hide_input=True)
    try:
        with Progress(TextColumn("uploading"), BarColumn(), TextColumn("{task.completed}/{task.total} files"),
                      TimeRemainingColumn(), console=err, transient=True, disable=as_json) as bar:
            task = bar.add_task("upload", total=None)
            sent, kept = upload_folder(client(endpoint, key, secret, region), endpoint or "AWS S3", bucket, prefix, folder,
                                       threads=threads, progress=lambda done, total: bar.update(task, completed=done, total=total))
    except UploadError as exc:
        fail(str(exc))
    result = {"bucket": bucket, "prefix": normal_prefix(prefix), "uploaded": sent, "kept": kept}
    if not emit(result, as_json):
        out.print(f"{sent} file(s) uploaded, {kept} already there, to s3://{bucket}/{normal_prefix(prefix)}")


@credentials_app.command("add")
def s3_credentials_add(
    name: str,
    access_key_id: str = typer.Option(..., help="The access key id."),
    endpoint: str = typer.Option("", help="The S3 endpoint URL (empty: AWS)."),
    region: str = typer.Option(""),
    as_json: bool = JSON,
) -> None:
    """Store a credential on the server under NAME. The secret key is read from
    $DIGITS_S3_SECRET (or asked for, not echoed): never from the command line, where the
    shell's history would keep it."""
    import os

    secret = os.environ.get("DIGITS_S3_SECRET") or typer.prompt("Secret access key", hide_input=True)
    try:
        row = api().post("/api/s3/credentials/", {"name": name, "access_key_id": access_key_id, "endpoint_url": endpoint,
                                                  "region": region, "secret_access_key": secret})
    except ApiError as exc:
        fail(str(exc))
    if not emit(row, as_json):
        out.print(f"Credential {row['name']!r} stored (#{row['id']}); its secret is kept encrypted.")


@credentials_app.command("list")
def s3_credentials_list(as_json: bool = JSON) -> None:
    """Your credentials: name, endpoint, access key id (never the secret)."""
    try:
        rows = list(api().pages("/api/s3/credentials/"))
    except ApiError as exc:
        fail(str(exc))
    if not emit(rows, as_json):
        for r in rows:
            out.print(f"{r['name']}\t{r['endpoint_url'] or 'AWS S3'}\t{r['access_key_id']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
