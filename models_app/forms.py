from __future__ import annotations

from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User

from datasets.selectors import dataset_usable_list
from workers.errors import JobError
from workers.models import Device, Priority, Visibility
from workers.permissions import visible_q

from .models import MeanSubtraction, Network, Pruner, SweepMode, TrainedModel
from .selectors import model_list
from .services import PARAM_FIELDS


class ModelForm(forms.ModelForm):
    """The new-model form: the model's own field validators give per-field errors, the
    service's cross-field checks come back as errors on the field they name."""

    # Shown as one fieldset each, in this order (the template walks `sections`).
    SECTIONS = [
        ("Job", ["name", "group", "notes", "visibility", "dataset"]),
        ("Network", ["network", "base_model", "base_epoch", "custom_code"]),
        ("Solver", ["solver", "epochs", "batch_size", "batch_accumulation", "learning_rate", "momentum", "weight_decay", "seed", "precision"]),
        ("Learning-rate policy", ["lr_policy", "lr_step_size", "lr_steps", "lr_gamma", "lr_power", "lr_warmup_epochs"]),
        ("Data transforms", ["crop_size", "mean_subtraction", "flip", "rotate90", "rotation", "scale_jitter", "hsv_jitter"]),
        ("Validation, snapshots and stopping", ["val_interval", "snapshot_interval", "keep_snapshots", "early_stopping_patience"]),
        ("Devices and queue", ["placement", "devices", "device_ids", "multi_host", "priority", "time_limit_hours", "preemptible"]),
        ("Sweep (optional: many models)", ["sweep_space", "sweep_mode", "sweep_max_trials", "sweep_max_concurrent",
                                            "sweep_metric", "sweep_pruner"]),
    ]
    PLACEMENT_FIELDS = ["placement", "devices", "device_ids", "multi_host", "priority", "time_limit_hours", "preemptible"]
    SWEEP_FIELDS = ["sweep_space", "sweep_mode", "sweep_max_trials", "sweep_max_concurrent", "sweep_metric", "sweep_pruner"]

    sweep_space = forms.CharField(
        required=False, label="Sweep these options",
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "code",
                                     "placeholder": "learning_rate = 0.1, 0.01, 0.001\nbatch_size = 32, 64"}),
        help_text="One option per line: `option = a, b, c` (values) or `option = low .. high [log] [step N]` (a range: "
        "random search and optimise). Each trial is a model with the other options above. Empty: one model.",
    )
    sweep_mode = forms.ChoiceField(choices=SweepMode.choices, initial=SweepMode.GRID, required=False, label="Search")
    sweep_max_trials = forms.IntegerField(min_value=1, max_value=1000, initial=16, required=False, label="Max trials",
                                          help_text="A grid makes every combination (at most this many).")
    sweep_max_concurrent = forms.IntegerField(min_value=1, max_value=64, initial=2, required=False, label="At most at once",
                                              help_text="Trials queued or running at a time (your device limit still holds).")
    sweep_metric = forms.ChoiceField(choices=[("val_accuracy", "highest validation accuracy"), ("val_loss", "lowest validation loss")],
                                     required=False, label="Best trial")
    sweep_pruner = forms.ChoiceField(choices=Pruner.choices, initial=Pruner.NONE, required=False, label="Pruning",
                                     help_text="Stop trials early that will not beat the others (at each validation).")

    name = forms.CharField(max_length=200)
    group = forms.CharField(max_length=100, required=False, help_text="Optional: jobs with the same group are shown together.")
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.TEAM, required=False, label="Who may see it",
                                   help_text="Your teams (everyone, if you are in none), everyone, or only you. Admins see all.")
    placement = forms.ChoiceField(
        choices=[("next", "Next available device"), ("count", "A number of devices"), ("specific", "Specific devices")],
        initial="next", widget=forms.RadioSelect, label="Run on", required=False,
    )
    devices = forms.IntegerField(
        min_value=1, initial=1, required=False, label="Number of devices",
        help_text="One rank per device (DDP). The batch size is the global batch, split evenly over them.",
    )
    device_ids: forms.ModelMultipleChoiceField[Device] = forms.ModelMultipleChoiceField(
        queryset=Device.objects.none(), required=False, widget=forms.CheckboxSelectMultiple, label="Devices",
        help_text="The job starts when all of them are free at once.",
    )
    multi_host = forms.BooleanField(required=False, label="Allow several hosts", help_text="Ranks on one host are faster; allow this to start sooner on a busy team.")
    priority = forms.TypedChoiceField(
        coerce=int, initial=Priority.NORMAL, required=False, label="Priority",
        help_text="Between users of one priority, whoever used the devices least lately goes first (fair share).",
    )
    time_limit_hours = forms.FloatField(
        min_value=0, required=False, label="Time limit (hours)",
        help_text="Each run stops after this long with a snapshot, as 'timed out'; resume it to go on. Empty: the site's default.",
    )
    preemptible = forms.BooleanField(
        required=False, label="Preemptible",
        help_text="An urgent job may take its devices: it stops with a snapshot and resumes by itself, losing nothing.",
    )

    class Meta:
        model = TrainedModel
        fields = ["dataset", *PARAM_FIELDS]
        labels = {
            "base_model": "Previous model (fine-tune)",
            "base_epoch": "Snapshot epoch",
            "lr_policy": "Policy",
            "lr_step_size": "Step size (%)",
            "lr_steps": "Steps (%)",
            "lr_gamma": "Gamma",
            "lr_power": "Power",
            "lr_warmup_epochs": "Warm-up epochs",
            "val_interval": "Validation interval (epochs)",
            "snapshot_interval": "Snapshot interval (epochs)",
            "early_stopping_patience": "Early stopping patience",
            "rotate90": "Random quarter turns",
            "rotation": "Random rotation (degrees)",
            "hsv_jitter": "HSV jitter",
            "batch_accumulation": "Batch accumulation",
            "precision": "Precision",
        }
        widgets = {
            "custom_code": forms.Textarea(attrs={"rows": 22, "spellcheck": "false", "class": "code", "wrap": "off"}),
            "lr_steps": forms.TextInput(attrs={"placeholder": "50,85"}),
        }
        help_texts = {
            "network": "Each standard network lists the input size it was made for; the output layer is sized to the dataset.",
            "base_model": "Start from a previous model's weights (its network is reused). Leave empty to train from scratch.",
            "base_epoch": "Empty: its latest snapshot.",
            "custom_code": "Define build(input_shape, num_classes) returning a torch.nn.Module; input_shape is (channels, height, width).",
        }

    def __init__(self, *args: Any, user: User | AnonymousUser | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        dataset = cast(forms.ModelChoiceField, self.fields["dataset"])
        dataset.queryset = dataset_usable_list().filter(visible_q(user, "job__")) if user is not None else dataset_usable_list()
        dataset.help_text = "A built dataset, or one still building (training waits for it)."
        # Django's per-field override of the option labels.
        dataset.label_from_instance = lambda d: (  # type: ignore[method-assign,assignment]
            f"{d.job.name} ({'' if d.task == 'classification' else d.task + ', '}{d.image_width}x{d.image_height}, "
            f"{d.job.status}, #{d.pk})"
        )
        # Any number of models: not a dropdown but an id, with a search picker fed by the
        # paginated API (frontend/static/js/model_new.js); the id alone works without JS.
        base_model = cast(forms.ModelChoiceField, self.fields["base_model"])
        base_model.queryset = model_list().filter(snapshots__isnull=False).distinct()
        base_model.widget = forms.NumberInput(
            attrs={"placeholder": "model id", "min": 1, "data-picker": "models", "autocomplete": "off"}
        )
        network = cast(forms.ChoiceField, self.fields["network"])
        network.choices = network_choices()
        self.fields["custom_code"].required = False
        self._placement_fields(user)
        from .services import can_submit_code

        if user is not None and not can_submit_code(user):
            network.choices = [c for c in network.choices if c[0] != Network.CUSTOM]
            self.fields["custom_code"].disabled = True
            self.fields["custom_code"].help_text = (
                "Custom code needs the 'Can train networks from custom PyTorch code' permission; ask an admin."
            )

    def dataset_tasks(self) -> dict[int, str]:
        """Each offered dataset's task: the page offers the networks made for it."""
        queryset = cast(forms.ModelChoiceField, self.fields["dataset"]).queryset
        return dict(queryset.values_list("pk", "task")) if queryset is not None else {}

    def _placement_fields(self, user: User | AnonymousUser | None) -> None:
        """Each device labelled with what runs on it and what waits for it (DIGITS users
        asked to see that before picking), and the priorities this user may choose."""
        from workers.selectors import device_board

        board = {row["device"].pk: row for row in device_board()}
        running = [row["allocation"].job_id for row in board.values() if row["allocation"] is not None]
        from workers.models import Job

        shown = set(Job.objects.filter(visible_q(user), pk__in=running).values_list("pk", flat=True)) if user else set()
        field = cast(forms.ModelMultipleChoiceField, self.fields["device_ids"])
        field.queryset = Device.objects.all()

        def label(device: Device) -> str:
            row = board.get(device.pk, {})
            allocation = row.get("allocation")
            state = "offline" if not device.online else ("drained" if not device.enabled else "free")
            if allocation is not None and allocation.job is not None:
                name = repr(allocation.job.name) if allocation.job_id in shown else "a job not shared with you"
                state = f"running {name} ({allocation.owner.username})"
            asked = len(row.get("asked", []))
            waiting = f"; {asked} queued job{'s' if asked != 1 else ''} asked for it" if asked else ""
            return f"{device.label}: {device.name}, {state}{waiting}"

        field.label_from_instance = label  # type: ignore[method-assign,assignment]  # Django's per-field override
        allowed = Priority.values if user is not None and getattr(user, "is_staff", False) else Priority.for_users()
        cast(forms.ChoiceField, self.fields["priority"]).choices = [(v, label) for v, label in Priority.choices if v in allowed]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("priority") in (None, ""):  # not sent: the default priority
            data["priority"] = int(Priority.NORMAL)
        mode = data.get("placement") or "next"
        if mode == "next":
            data["devices"], data["device_ids"] = 1, []
        elif mode == "count":
            data["device_ids"] = []
            data["devices"] = data.get("devices") or 1
        elif not data.get("device_ids"):
            self.add_error("device_ids", "Pick at least one device.")
        if (data.get("sweep_space") or "").strip():
            from .sweeps import parse_space_text

            try:
                data["sweep_parsed"] = parse_space_text(data["sweep_space"])
            except JobError as exc:
                self.add_error("sweep_space", str(exc))
        return data

    def sweep(self) -> dict[str, Any] | None:
        """The sweep asked for (space, mode, budget, metric, pruner), or None for one model."""
        data = self.cleaned_data
        if not (data.get("sweep_space") or "").strip():
            return None
        return {
            "space": data["sweep_parsed"], "mode": data.get("sweep_mode") or SweepMode.GRID,
            "max_trials": data.get("sweep_max_trials") or 16, "max_concurrent": data.get("sweep_max_concurrent") or 2,
            "metric": data.get("sweep_metric") or "val_accuracy", "pruner": data.get("sweep_pruner") or Pruner.NONE,
        }

    def split(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model parameters, placement request) from the cleaned data."""
        data = dict(self.cleaned_data)
        for name in [*self.SWEEP_FIELDS, "sweep_parsed"]:
            data.pop(name, None)
        placement = {name: data.pop(name, None) for name in self.PLACEMENT_FIELDS}
        placement.pop("placement")
        placement["device_ids"] = [d.pk for d in placement["device_ids"] or []]
        if placement["device_ids"]:
            placement["devices"] = None
        return data, placement

    def sections(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(title, [self[name] for name in names]) for title, names in self.SECTIONS]


def network_choices() -> list[Any]:
    """The standard networks labelled with their intended input size, grouped by what they
    are for (the page shows the group of the chosen dataset's task), then custom code."""
    from .authoring import network_catalogue

    groups: dict[str, list[tuple[str, str]]] = {}
    for n in network_catalogue():
        groups.setdefault(n["task"], []).append((n["name"], f"{n['label']} ({n['intended_input'][1]}x{n['intended_input'][0]})"))
    return [*((task.capitalize(), choices) for task, choices in groups.items()), (Network.CUSTOM, Network.CUSTOM.label)]


class ClassifyForm(forms.Form):
    image = forms.ImageField()
    epoch = forms.TypedChoiceField(coerce=float, required=False, empty_value=None, label="Snapshot")
    views = forms.BooleanField(
        required=False, label="Show visualizations and statistics",
        help_text="Every layer's weights and activations for this image, and a Grad-CAM map of what drove the top prediction.",
    )

    def __init__(self, *args: Any, epochs: list[float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["epoch"]).choices = [("", "latest")] + [(e, f"epoch {e:g}") for e in (epochs or [])]


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """Any number of files from one input (Django's documented recipe)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("widget", MultipleFileInput())
        super().__init__(*args, **kwargs)

    def clean(self, data: Any, initial: Any = None) -> list[Any]:
        single = super().clean
        if isinstance(data, (list, tuple)):
            return [single(item, initial) for item in data]
        return [single(data, initial)] if data else []


class EvaluateForm(forms.Form):
    """Run a snapshot over many images (models_app/evaluations.py): a split of the model's
    dataset, a text list of image paths (DIGITS' classify many), or uploaded images."""

    SOURCES = [("split", "A split of the dataset"), ("list", "An image list"), ("files", "Uploaded images")]
    source = forms.ChoiceField(choices=SOURCES, initial="split", widget=forms.RadioSelect, label="Images")
    epoch = forms.TypedChoiceField(coerce=float, required=False, empty_value=None, label="Snapshot")
    SPLITS = [("val", "validation"), ("test", "test"), ("train", "train")]
    split = forms.ChoiceField(choices=SPLITS, initial="val", required=False)
    image_list_file = forms.FileField(
        required=False, label="Image list", help_text="A text file of `path [label]` lines; the label (a class index or name) is optional.",
    )
    list_path = forms.CharField(required=False, label="…or a list on the server", help_text="Its path, under a data root.")
    image_folder = forms.CharField(
        required=False, label="Image folder (optional)", help_text="The list's relative paths are taken under this server folder.",
    )
    images = MultipleFileField(
        required=False, label="Images or archives",
        help_text="Image files, or .zip/.tar archives; files in folders named like a class are scored against it.",
    )

    def __init__(
        self, *args: Any, epochs: list[float] | None = None, splits: list[str] | None = None, task: str = "classification",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["epoch"]).choices = [("", "latest")] + [(e, f"epoch {e:g}") for e in (epochs or [])]
        if splits is not None:
            cast(forms.ChoiceField, self.fields["split"]).choices = [(v, label) for v, label in self.SPLITS if v in splits]
        if task != "classification":
            # The ground truth of segmentation and detection is the split's label images or
            # boxes: a split only (one image of one's own: Classify one image).
            cast(forms.ChoiceField, self.fields["source"]).choices = self.SOURCES[:1]
            self.fields["source"].widget = forms.HiddenInput()
            for name in ("image_list_file", "list_path", "image_folder", "images"):
                del self.fields[name]

    def clean_image_list_file(self) -> str | None:
        upload = self.cleaned_data.get("image_list_file")
        if not upload:
            return None
        if upload.size > settings.MAX_UPLOAD_LIST_BYTES:
            raise forms.ValidationError(f"The list is larger than {settings.MAX_UPLOAD_LIST_BYTES >> 20} MiB.")
        try:
            return upload.read().decode("utf-8")
        except UnicodeDecodeError:
            raise forms.ValidationError("The list must be a UTF-8 text file of `path [label]` lines.") from None

    def service_args(self) -> dict[str, Any]:
        """The arguments of evaluation_create for the chosen source."""
        data = self.cleaned_data
        args: dict[str, Any] = {"epoch": data["epoch"]}
        if data["source"] == "split":
            args["split"] = data["split"] or "val"
        elif data["source"] == "list":
            args.update(image_list=data["image_list_file"], list_path=data["list_path"].strip(), image_folder=data["image_folder"].strip())
        else:
            args["files"] = data["images"]
        return args


class ExportForm(forms.Form):
    """Export a snapshot to ONNX and torch.export (models_app/exports.py)."""

    epoch = forms.TypedChoiceField(coerce=float, required=False, empty_value=None, label="Snapshot")

    def __init__(self, *args: Any, epochs: list[float] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["epoch"]).choices = [("", "latest")] + [(e, f"epoch {e:g}") for e in (epochs or [])]


class ImportForm(forms.Form):
    """Import a model trained elsewhere (models_app/importing.py)."""

    name = forms.CharField(max_length=200)
    dataset = forms.ModelChoiceField(
        queryset=dataset_usable_list(), help_text="The model's classes and image size must match it: it gives the labels, mean and preprocessing.",
    )
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.TEAM, required=False, label="Who may see it")
    file = forms.FileField(
        label="Model file",
        help_text="An archive downloaded from a model's page (.tar.gz, .zip), or a PyTorch state dict (.pt, .pth).",
    )
    network = forms.ChoiceField(required=False, help_text="For a state dict: the network it belongs to.")
    crop_size = forms.IntegerField(required=False, min_value=1, max_value=4096, help_text="For a state dict: the centre crop its input had.")
    mean_subtraction = forms.ChoiceField(choices=MeanSubtraction.choices, initial=MeanSubtraction.IMAGE, required=False,
                                         help_text="For a state dict: what it was trained with.")
    group = forms.CharField(max_length=100, required=False)
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, user: User | AnonymousUser | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if user is not None:  # only the datasets this user may see
            dataset = cast(forms.ModelChoiceField, self.fields["dataset"])
            dataset.queryset = dataset_usable_list().filter(visible_q(user, "job__"))
        cast(forms.ChoiceField, self.fields["network"]).choices = [("", "— (from the archive)")] + [
            (value, label) for value, label in Network.choices if value != Network.CUSTOM
        ]

    def clean_mean_subtraction(self) -> str:
        return self.cleaned_data.get("mean_subtraction") or MeanSubtraction.IMAGE
