"""Image classification models (training runs), their metrics and snapshots."""
from __future__ import annotations

from pathlib import Path

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from datasets.models import Dataset
from workers.models import Job, JobStatus

from .training.spec import DEFAULTS


class Network(models.TextChoices):
    LENET = "lenet", "LeNet"
    ALEXNET = "alexnet", "AlexNet"
    GOOGLENET = "googlenet", "GoogLeNet"
    RESNET18 = "resnet18", "ResNet-18"
    RESNET50 = "resnet50", "ResNet-50"
    MOBILENET_V3 = "mobilenet_v3", "MobileNetV3 (large)"
    EFFICIENTNET_B0 = "efficientnet_b0", "EfficientNet-B0"
    VIT_B_16 = "vit_b_16", "ViT-B/16"
    UNET_SMALL = "unet_small", "Small U-Net (segmentation)"
    FCN_RESNET50 = "fcn_resnet50", "FCN ResNet-50 (segmentation)"
    DEEPLABV3_MOBILENET = "deeplabv3_mobilenet_v3_large", "DeepLabV3 MobileNetV3-Large (segmentation)"
    DEEPLABV3_RESNET50 = "deeplabv3_resnet50", "DeepLabV3 ResNet-50 (segmentation)"
    LRASPP_MOBILENET = "lraspp_mobilenet_v3_large", "LR-ASPP MobileNetV3-Large (segmentation)"
    FCOS_SMALL = "fcos_small", "Small FCOS (detection)"
    FASTERRCNN_RESNET50 = "fasterrcnn_resnet50_fpn", "Faster R-CNN ResNet-50 FPN (detection)"
    RETINANET_RESNET50 = "retinanet_resnet50_fpn", "RetinaNet ResNet-50 FPN (detection)"
    FCOS_RESNET50 = "fcos_resnet50_fpn", "FCOS ResNet-50 FPN (detection)"
    SSDLITE_MOBILENET = "ssdlite320_mobilenet_v3_large", "SSDlite320 MobileNetV3-Large (detection)"
    CUSTOM = "custom", "Custom (PyTorch code)"


class Solver(models.TextChoices):
    SGD = "sgd", "SGD (momentum)"
    NESTEROV = "nesterov", "Nesterov's accelerated gradient"
    ADAGRAD = "adagrad", "AdaGrad"
    RMSPROP = "rmsprop", "RMSprop"
    ADADELTA = "adadelta", "AdaDelta"
    ADAM = "adam", "Adam"
    ADAMW = "adamw", "AdamW"


class LrPolicy(models.TextChoices):
    FIXED = "fixed", "Fixed"
    STEP = "step", "Step down"
    MULTISTEP = "multistep", "Step down (arbitrary steps)"
    EXP = "exp", "Exponential decay"
    INV = "inv", "Inverse decay"
    POLY = "poly", "Polynomial decay"
    SIGMOID = "sigmoid", "Sigmoid decay"
    COSINE = "cosine", "Cosine annealing"


class MeanSubtraction(models.TextChoices):
    NONE = "none", "None"
    IMAGE = "image", "Mean image"
    PIXEL = "pixel", "Mean pixel"


class Flip(models.TextChoices):
    NONE = "none", "None"
    HORIZONTAL = "h", "Horizontal"
    VERTICAL = "v", "Vertical"
    BOTH = "hv", "Horizontal and vertical"


class Precision(models.TextChoices):
    FP32 = "fp32", "Full (fp32)"
    BF16 = "bf16", "Mixed bf16 (GPU)"
    FP16 = "fp16", "Mixed fp16 (GPU)"


def _range(low: float, high: float) -> list:
    return [MinValueValidator(low), MaxValueValidator(high)]


# The job kind of a training run (models_app/kind.py registers it with the job engine).
MODEL_KIND = "model"


class TrainedModel(models.Model):
    """A training run's parameters. Validators here give field errors on both the form
    and the API (ModelForm and ModelSerializer read them); cross-field rules live in
    `services.validate_params`."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="model")
    # PROTECT: a dataset in use cannot be deleted from under its models.
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="models")

    # The network: a standard one, custom code, or (with base_model) a previous model's
    # network fine-tuned from one of its snapshots.
    network = models.CharField(max_length=32, choices=Network.choices, default=DEFAULTS.network)
    custom_code = models.TextField(blank=True, default="")
    base_model = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="fine_tuned",
        help_text="Fine-tune: start from this model's weights.",
    )
    base_epoch = models.FloatField(null=True, blank=True, help_text="The snapshot of the base model to start from.")
    # The weights file actually used (copied into the job folder): fine-tuning keeps
    # working when the base model is later deleted.
    pretrained_file = models.CharField(max_length=200, blank=True, default="")

    # Solver.
    solver = models.CharField(max_length=16, choices=Solver.choices, default=DEFAULTS.solver)
    epochs = models.FloatField(default=DEFAULTS.epochs, validators=_range(0.01, 10_000), help_text="Fractions allowed.")
    batch_size = models.PositiveIntegerField(default=DEFAULTS.batch_size, validators=_range(1, 65_536))
    batch_accumulation = models.PositiveIntegerField(
        default=DEFAULTS.batch_accumulation, validators=_range(1, 1024), help_text="Sum the gradients of this many batches before each step."
    )
    learning_rate = models.FloatField(default=DEFAULTS.learning_rate, validators=_range(1e-12, 10))
    momentum = models.FloatField(default=DEFAULTS.momentum, validators=_range(0, 0.9999), help_text="SGD, Nesterov and RMSprop.")
    weight_decay = models.FloatField(default=DEFAULTS.weight_decay, validators=_range(0, 0.9999))
    # Any 64-bit seed a database column holds (DIGITS' own tests use 0xCAFEBABE).
    seed = models.BigIntegerField(default=DEFAULTS.seed, validators=_range(0, 2**63 - 1), help_text="Same seed and data on CPU: the same curves.")

    # Learning-rate policy, over training progress (DIGITS' percent-of-training units).
    lr_policy = models.CharField(max_length=16, choices=LrPolicy.choices, default=DEFAULTS.lr_policy)
    lr_step_size = models.FloatField(default=DEFAULTS.lr_step_size, validators=_range(0.01, 100), help_text="Step / sigmoid: % of training.")
    lr_steps = models.CharField(
        max_length=200, blank=True, default=DEFAULTS.lr_steps, help_text="Multistep: comma-separated % of training."
    )
    lr_gamma = models.FloatField(default=DEFAULTS.lr_gamma, validators=_range(1e-9, 100), help_text="Step, multistep, exp, inv, sigmoid.")
    lr_power = models.FloatField(default=DEFAULTS.lr_power, validators=_range(1e-6, 100), help_text="Inv and poly.")
    lr_warmup_epochs = models.FloatField(default=DEFAULTS.lr_warmup_epochs, validators=_range(0, 1000), help_text="Linear warm-up from 0.")

    # Validation, snapshots and stopping.
    val_interval = models.FloatField(default=DEFAULTS.val_interval, validators=_range(0.01, 1000), help_text="In epochs; fractions allowed.")
    snapshot_interval = models.FloatField(default=DEFAULTS.snapshot_interval, validators=_range(0.01, 1000), help_text="In epochs; fractions allowed.")
    early_stopping_patience = models.PositiveIntegerField(
        null=True, blank=True, validators=_range(1, 1000),
        help_text="Stop after this many validations without a lower validation loss (empty: never).",
    )

    # Data transforms (training only, except crop and mean).
    crop_size = models.PositiveIntegerField(
        null=True, blank=True, validators=_range(1, 4096), help_text="Random crop in training, centre crop in validation."
    )
    mean_subtraction = models.CharField(max_length=8, choices=MeanSubtraction.choices, default=DEFAULTS.mean_subtraction)
    flip = models.CharField(max_length=4, choices=Flip.choices, default=DEFAULTS.flip)
    rotate90 = models.BooleanField(default=DEFAULTS.rotate90, help_text="Random quarter turns (square inputs).")
    rotation = models.FloatField(default=DEFAULTS.rotation, validators=_range(0, 45), help_text="Random rotation up to ± this many degrees.")
    scale_jitter = models.FloatField(default=DEFAULTS.scale_jitter, validators=_range(0, 0.5), help_text="Random zoom by up to ± this fraction.")
    hsv_jitter = models.FloatField(
        default=DEFAULTS.hsv_jitter, validators=_range(0, 0.5), help_text="Random hue, saturation and value shifts up to ± this fraction."
    )
    precision = models.CharField(max_length=8, choices=Precision.choices, default=DEFAULTS.precision)
    keep_snapshots = models.PositiveIntegerField(
        null=True, blank=True, validators=_range(1, 10_000),
        help_text="Keep the last this many snapshots and the best one; older ones are deleted to free space "
        "(empty: the site's setting, DIGITS_SNAPSHOT_KEEP_LAST).",
    )
    snapshots_freed_bytes = models.BigIntegerField(default=0)

    # An imported model (models_app/importing.py) was trained elsewhere: its one snapshot
    # came from an upload, and `imported_from` says which.
    imported_from = models.CharField(max_length=300, blank=True, default="")

    # The best validation accuracy so far and its epoch, kept with each validation
    # (services.model_refresh_best), so lists sort and show it without reading metrics.
    best_val_accuracy = models.FloatField(null=True, blank=True, db_index=True)
    best_epoch = models.FloatField(null=True, blank=True)

    # How to reproduce it (models_app/training/train.py: Trainer.record): the first run's
    # versions, devices and resolved spec; a resumed run's versions under "resumes".
    record = models.JSONField(default=dict, blank=True)

    # What training told the user (fine-tuning, early stopping, fp32 fallback, resume).
    notices = models.JSONField(default=list, blank=True)
    # Where the last run's time went (startup, training loop, validation, snapshots).
    timings = models.JSONField(default=dict, blank=True)

    class Meta:
        permissions = [("submit_custom_network", "Can train networks from custom PyTorch code")]

    def __str__(self) -> str:
        return self.job.name

    @property
    def directory(self) -> Path:
        return self.job.directory

    @property
    def resumable(self) -> bool:
        return self.job.status in JobStatus.resumable() and self.snapshots.exists() and not self.imported_from

    @property
    def imported(self) -> bool:
        return bool(self.imported_from)


class Metric(models.Model):
    """One point of a chart. `iteration` (optimizer steps) orders points; `epoch` is fractional."""

    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="metrics")
    # train_loss, lr, throughput, val_loss, val_accuracy, val_top5
    name = models.CharField(max_length=32)
    iteration = models.PositiveIntegerField()
    epoch = models.FloatField()
    value = models.FloatField()

    class Meta:
        indexes = [models.Index(fields=["model", "name", "iteration"])]
        ordering = ["iteration", "id"]


class Snapshot(models.Model):
    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="snapshots")
    epoch = models.FloatField()
    iteration = models.PositiveIntegerField(default=0)
    filename = models.CharField(max_length=200)
    created_at = models.DateTimeField(auto_now_add=True)
    val_loss = models.FloatField(null=True, blank=True)
    val_accuracy = models.FloatField(null=True, blank=True)
    val_top5 = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["iteration", "epoch"]
        constraints = [models.UniqueConstraint(fields=["model", "epoch"], name="unique_snapshot_epoch")]

    def __str__(self) -> str:
        return f"epoch {self.epoch:g}"

    @property
    def path(self) -> Path:
        return self.model.directory / self.filename


# The job kind of an evaluation (models_app/kind.py registers it with the job engine).
EVALUATION_KIND = "evaluation"


class EvaluationSource(models.TextChoices):
    SPLIT = "split", "A split of the model's dataset"
    LIST = "list", "A text list of image paths on the server"
    FILES = "files", "Uploaded images or archives"


class Evaluation(models.Model):
    """A snapshot run over many images, a split of its dataset or files (classify many): a
    job of its own (shared primary key), its metrics (models_app/metrics.py) on the row
    and every image's probabilities in `predictions.npz` in the job's folder, so its page
    reloads without running anything."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="evaluation")
    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="evaluations")
    epoch = models.FloatField(help_text="The snapshot's epoch.")
    source = models.CharField(max_length=8, choices=EvaluationSource.choices, default=EvaluationSource.SPLIT)
    split = models.CharField(max_length=8, blank=True, choices=[("train", "train"), ("val", "val"), ("test", "test")])
    description = models.CharField(max_length=300, blank=True, help_text="What was classified: the list, the uploaded files.")
    image_folder = models.CharField(max_length=1000, blank=True, help_text="A list's relative paths are under this server folder.")
    metrics = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return self.job.name

    @property
    def directory(self) -> Path:
        return self.job.directory

    @property
    def labels(self) -> list[str]:
        return list(self.model.dataset.labels)

    @property
    def title(self) -> str:
        return self.split if self.source == EvaluationSource.SPLIT else self.description


# The job kind of an export (models_app/kind.py registers it with the job engine).
EXPORT_KIND = "export"


class ExportFormat(models.TextChoices):
    ONNX = "onnx", "ONNX"
    PT2 = "pt2", "torch.export (.pt2)"


class Export(models.Model):
    """A snapshot exported to ONNX and torch.export and checked against PyTorch on images
    of its dataset before anyone downloads it: a job of its own (models_app/export_verify.py
    is its child). `results` holds one entry per format (and PyTorch's own latency as the
    reference): passed or failed, the differences, top-1 agreement, latency, the error."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="export")
    model = models.ForeignKey(TrainedModel, on_delete=models.CASCADE, related_name="exports")
    epoch = models.FloatField(help_text="The snapshot's epoch.")
    results = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return self.job.name

    @property
    def directory(self) -> Path:
        return self.job.directory

    def passed(self, fmt: str) -> bool:
        return self.results.get("formats", {}).get(fmt, {}).get("status") == "passed"


class SweepMode(models.TextChoices):
    GRID = "grid", "Grid: every combination"
    RANDOM = "random", "Random search"
    OPTUNA = "optuna", "Optimise (Optuna TPE)"


class SweepStatus(models.TextChoices):
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    ABORTED = "aborted", "Aborted"


class Pruner(models.TextChoices):
    NONE = "none", "None"
    MEDIAN = "median", "Median (stop a trial below the median of the others at the same epoch)"
    HYPERBAND = "hyperband", "Hyperband"


class Sweep(models.Model):
    """Many training runs of one search space (models_app/sweeps.py): a grid (one model per
    combination, as DIGITS did), random search, or Optuna's TPE in ask-and-tell form with
    median or Hyperband pruning. Each trial is an ordinary model; the study's state is
    these rows, not Optuna's storage."""

    owner = models.ForeignKey("auth.User", on_delete=models.CASCADE, related_name="sweeps")
    name = models.CharField(max_length=200)
    group = models.CharField(max_length=100, blank=True, help_text="Its trials' group.")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="sweeps")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=8, choices=SweepStatus.choices, default=SweepStatus.RUNNING)
    mode = models.CharField(max_length=8, choices=SweepMode.choices, default=SweepMode.GRID)
    # {param: {"values": [...]} | {"low": x, "high": y, "log": bool, "step": s, "int": bool}}
    space = models.JSONField()
    base = models.JSONField(default=dict, help_text="The parameters every trial shares.")
    placement = models.JSONField(default=dict, help_text="Devices and priority of each trial.")
    metric = models.CharField(max_length=16, default="val_accuracy", choices=[("val_accuracy", "val_accuracy"), ("val_loss", "val_loss")])
    max_trials = models.PositiveIntegerField(default=16, validators=_range(1, 1000))
    max_concurrent = models.PositiveIntegerField(default=2, validators=_range(1, 64))
    pruner = models.CharField(max_length=10, choices=Pruner.choices, default=Pruner.NONE)
    seed = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return self.name

    @property
    def maximize(self) -> bool:
        return self.metric == "val_accuracy"


class TrialState(models.TextChoices):
    RUNNING = "running", "Running"
    COMPLETE = "complete", "Complete"
    PRUNED = "pruned", "Pruned"
    FAILED = "failed", "Failed"


class Trial(models.Model):
    sweep = models.ForeignKey(Sweep, on_delete=models.CASCADE, related_name="trials")
    number = models.PositiveIntegerField()
    # The trial's model; kept as a record (params, value) when the model is deleted.
    model = models.OneToOneField(TrainedModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="trial")
    params = models.JSONField()
    state = models.CharField(max_length=10, choices=TrialState.choices, default=TrialState.RUNNING)
    value = models.FloatField(null=True, blank=True, help_text="The sweep's metric: the trial's best.")
    best_epoch = models.FloatField(null=True, blank=True)
    # {step: value}, step = round(epoch * 100): what the pruner compares across trials.
    intermediate = models.JSONField(default=dict, blank=True)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [models.UniqueConstraint(fields=["sweep", "number"], name="unique_trial_number")]
