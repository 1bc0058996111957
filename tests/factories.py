"""Rows made straight through the ORM, for tests that need no worker."""
from __future__ import annotations

from datasets.models import Dataset
from models_app.models import Metric, Snapshot, TrainedModel
from workers.models import Job, JobEvent, JobStatus


def make_dataset(owner, name: str = "ds", status: str = JobStatus.DONE) -> Dataset:
    job = Job.objects.create(kind="dataset", name=name, owner=owner, status=status)
    JobEvent.objects.create(job=job, status=status)
    job.directory.mkdir(parents=True, exist_ok=True)
    return Dataset.objects.create(
        job=job, folder="/nowhere", labels=["a", "b"], counts={"train": 8, "val": 2},
        class_counts={"train": [4, 4], "val": [1, 1]},
    )


def make_model(owner, dataset: Dataset, name: str = "m", status: str = JobStatus.DONE, epochs: int = 2) -> TrainedModel:
    job = Job.objects.create(kind="model", name=name, owner=owner, status=status)
    JobEvent.objects.create(job=job, status=status)
    job.directory.mkdir(parents=True, exist_ok=True)
    model = TrainedModel.objects.create(job=job, dataset=dataset, epochs=epochs)
    for i in range(1, 11):
        Metric.objects.create(model=model, name="train_loss", iteration=i, epoch=i / 5, value=2.0 / i)
    for e in range(1, epochs + 1):
        Metric.objects.create(model=model, name="val_accuracy", iteration=e * 5, epoch=e, value=0.5 + e / 10)
        Snapshot.objects.create(model=model, epoch=e, filename=f"snapshot_epoch_{e}.pt", val_accuracy=0.5 + e / 10, val_loss=1.0)
    return model


def make_segmentation_dataset(owner, folder, name: str = "seg", size: tuple[int, int] = (32, 32)) -> Dataset:
    """A segmentation dataset really built (by the build child's code, in this process)
    from `folder` as written by datasets.synthetic.write_shapes."""
    from datasets.build import build
    from datasets.services import dataset_store_result

    job = Job.objects.create(kind="dataset", name=name, owner=owner, status=JobStatus.DONE)
    JobEvent.objects.create(job=job, status=JobStatus.DONE)
    job.directory.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.objects.create(
        job=job, task="segmentation", folder=str(folder / "images"), label_folder=str(folder / "masks"),
        class_list=str(folder / "classes.txt"), image_width=size[0], image_height=size[1], val_percent=25,
    )
    result = build({"task": "segmentation", "folder": dataset.folder, "label_folder": dataset.label_folder,
                    "class_list": dataset.class_list, "output_dir": str(job.directory), "width": size[0],
                    "height": size[1], "val_percent": 25, "workers": 1})
    dataset_store_result(dataset, result)
    return dataset


def make_detection_dataset(owner, folder, name: str = "det", size: tuple[int, int] = (48, 48)) -> Dataset:
    """A detection dataset really built (by the build child's code, in this process) from
    `folder` as written by datasets.synthetic.write_shapes (its KITTI labels)."""
    from datasets.build import build
    from datasets.services import dataset_store_result

    job = Job.objects.create(kind="dataset", name=name, owner=owner, status=JobStatus.DONE)
    JobEvent.objects.create(job=job, status=JobStatus.DONE)
    job.directory.mkdir(parents=True, exist_ok=True)
    dataset = Dataset.objects.create(
        job=job, task="detection", folder=str(folder / "images"), label_folder=str(folder / "labels"),
        image_width=size[0], image_height=size[1], val_percent=25,
    )
    result = build({"task": "detection", "folder": dataset.folder, "label_folder": dataset.label_folder,
                    "output_dir": str(job.directory), "width": size[0], "height": size[1], "val_percent": 25, "workers": 1})
    dataset_store_result(dataset, result)
    return dataset


def make_spatial_evaluation(owner, dataset: Dataset, network: str, split: str = "val"):
    """A segmentation or detection model with one snapshot of its untrained network (real
    weights, written as the trainer writes them), evaluated on `split` by the evaluation
    child's own code in this process: the rows, `predictions.npz` and metrics the pages read."""
    import torch

    from models_app.evaluate import evaluate
    from models_app.evaluations import evaluation_spec, evaluation_store_result
    from models_app.models import Evaluation
    from models_app.networks import build_network

    model = make_model(owner, dataset, name=f"{network}-model", epochs=1)
    TrainedModel.objects.filter(pk=model.pk).update(network=network)
    model.refresh_from_db()
    shape = (dataset.channels, dataset.image_height, dataset.image_width)
    torch.manual_seed(0)
    net = build_network(network, "", shape, dataset.num_classes)
    snapshot = model.snapshots.get()
    torch.save({"model": net.state_dict(), "network": network, "input_shape": list(shape),
                "num_classes": dataset.num_classes}, snapshot.path)
    job = Job.objects.create(kind="evaluation", name=f"{network} · {split}", owner=owner, status=JobStatus.DONE)
    JobEvent.objects.create(job=job, status=JobStatus.DONE)
    job.directory.mkdir(parents=True, exist_ok=True)
    evaluation = Evaluation.objects.create(job=job, model=model, epoch=snapshot.epoch, split=split)
    evaluation_store_result(evaluation.pk, evaluate(evaluation_spec(evaluation)))
    evaluation.refresh_from_db()
    return evaluation
