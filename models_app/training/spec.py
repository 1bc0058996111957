"""The training child's job spec: one typed object that both sides share.

The worker writes it (`models_app.services.model_train_spec`: every parameter of the
model, from its row), the child reads it back (`TrainSpec.from_dict`), and nothing in
between reads a field with a default of its own. The defaults of a model's parameters are
declared here, once: the Django model's fields take theirs from `DEFAULTS`
(models_app/models.py), so a form, the API, a clone and the child agree.
"""
from __future__ import annotations

from dataclasses import field, asdict, dataclass
from typing import Any

from workers.protocol import spec_from_dict


@dataclass(frozen=True)
class TrainSpec:
    # The data and where to write (set by the worker for each run).
    num_classes: int = 2
    input_shape: tuple[int, int, int] = (3, 28, 28)
    # "classification", "segmentation" or "detection" (the dataset's task): a segmentation
    # run reads each split's label images from its own database, aligned with the images'.
    task: str = "classification"
    train_db: str = ""
    val_db: str = ""
    train_labels_db: str = ""
    val_labels_db: str = ""
    # Detection ("detection"): each split's boxes (datasets/build.py, <split>_objects.npz).
    train_objects: str = ""
    val_objects: str = ""
    mean_path: str = ""
    output_dir: str = ""
    num_workers: int = 2
    cache_bytes: int = 2 << 30
    pretrained: str = ""  # weights to fine-tune from
    pretrained_label: str = "the base model"
    resume_from: str = ""  # a snapshot to continue from
    # Where the run came from (the code's version, the dataset and its checksums), kept in
    # the run's reproducibility record with what the child adds (package versions, devices).
    provenance: dict[str, Any] = field(default_factory=dict)

    # The model's parameters (TrainedModel's fields; see the module docstring).
    network: str = "lenet"
    custom_code: str = ""
    solver: str = "sgd"
    epochs: float = 10
    batch_size: int = 64  # the global batch, split over the ranks
    batch_accumulation: int = 1
    learning_rate: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    seed: int = 0
    lr_policy: str = "fixed"
    lr_step_size: float = 33.0
    lr_steps: str = "50,85"
    lr_gamma: float = 0.1
    lr_power: float = 1.0
    lr_warmup_epochs: float = 0.0
    val_interval: float = 1.0
    snapshot_interval: float = 1.0
    early_stopping_patience: int | None = None
    crop_size: int | None = None
    mean_subtraction: str = "image"
    flip: str = "none"
    rotate90: bool = False
    rotation: float = 0.0
    scale_jitter: float = 0.0
    hsv_jitter: float = 0.0
    precision: str = "fp32"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSpec:
        values = dict(data)
        if "input_shape" in values:  # a JSON list
            values["input_shape"] = tuple(int(v) for v in values["input_shape"])
        return spec_from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data


DEFAULTS = TrainSpec()
