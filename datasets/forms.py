from __future__ import annotations

from typing import Any, cast

from django import forms
from django.conf import settings

from workers.models import Visibility

from .models import PARAM_FIELDS, Dataset, ResizeMode, Source, param_field
from .plugins import Field as PluginField
from .plugins import data_plugins

RESIZE_HELP = {
    ResizeMode.SQUASH: "Stretch to the size; the aspect ratio changes.",
    ResizeMode.CROP: "Keep the aspect ratio, scale to cover the size, cut the overflow evenly from both sides.",
    ResizeMode.FILL: "Keep the aspect ratio, scale to fit inside the size, pad the short side with uniform random noise.",
    ResizeMode.HALF_CROP: "Scale by the mean of the two ratios: crop the long side, noise-pad the short side.",
}


class DatasetForm(forms.ModelForm):
    """The new-dataset form. Its option fields come from the Dataset model (labels, help,
    defaults, choices, validators: declared once there); what is added here is the job's
    name, group and notes, the upload id and the list files, which are not options."""

    # Which fields belong to which source: the template shows one group at a time.
    SOURCE_FIELDS = {
        Source.FOLDER: ["folder", "val_folder", "test_folder", "label_folder", "class_list", "annotations_file"],
        Source.TEXTFILE: [
            "labels_file", "labels_file_upload", "train_list", "train_list_upload", "val_list", "val_list_upload",
            "test_list", "test_list_upload", "image_folder", "shuffle",
        ],
        Source.UPLOAD: ["upload"],
        Source.S3: ["s3_credential", "s3_bucket", "s3_prefix", "s3_val_prefix", "s3_test_prefix"],
        Source.PLUGIN: ["plugin"],  # and each installed plugin's own fields, added in __init__
    }

    name = forms.CharField(max_length=200)
    group = forms.CharField(max_length=100, required=False, help_text="Optional: jobs with the same group are shown together.")
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    visibility = forms.ChoiceField(choices=Visibility.choices, initial=Visibility.TEAM, required=False, label="Who may see it",
                                   help_text="Your teams (everyone, if you are in none), everyone, or only you. Admins see all.")
    labels_file_upload = forms.FileField(required=False, label="… or upload the labels file")
    train_list_upload = forms.FileField(required=False, label="… or upload the training list")
    val_list_upload = forms.FileField(required=False, label="… or upload the validation list")
    test_list_upload = forms.FileField(required=False, label="… or upload the test list")
    upload = forms.CharField(required=False, widget=forms.HiddenInput)
    s3_credential = forms.ChoiceField(
        required=False, label="S3 credential",
        help_text="One of yours (endpoint and keys), added on the S3 credentials page; its secret is never shown again.",
    )

    class Meta:
        model = Dataset
        fields = PARAM_FIELDS
        widgets = {"source": forms.RadioSelect, "resize_mode": forms.RadioSelect}

    # The page's other fieldsets, in order (the template walks these; the resize modes
    # have a fieldset of their own with a preview of each).
    JOB_FIELDS = ("name", "task", "group", "notes", "visibility")
    SPLIT_FIELDS = ("val_percent", "test_percent")  # folder and archive sources
    SIZE_FIELDS = ("image_width", "image_height", "image_mode")
    OPTION_FIELDS = ("encoding", "jpeg_quality", "min_per_class", "max_per_class", "seed")

    def __init__(self, *args: Any, credentials: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["s3_credential"]).choices = [("", "—")] + [(n, n) for n in credentials or []]
        # Data plugins (datasets/plugins.py): one choice each, and their fields, named
        # `plugin_options__<plugin>__<field>`, shown with the plugin source.
        plugins = data_plugins().plugins
        self.fields["plugin"] = forms.ChoiceField(
            required=False, label="Data plugin", choices=[("", "—")] + [(n, f"{c.label} ({c.task})") for n, c in plugins.items()],
            help_text="Installed data plugins (GET /api/plugins/ lists them; the admin page, any that failed to load).",
        )
        self.plugin_fields: dict[str, list[str]] = {}
        for plugin_name, plugin in plugins.items():
            for option in plugin.fields:
                key = f"plugin_options__{plugin_name}__{option.name}"
                self.fields[key] = plugin_form_field(option, plugin.label)
                self.plugin_fields.setdefault(plugin_name, []).append(key)
        # An option left out of a post takes the model's default (as in the API), so a
        # script posting the form needs to send only what it changes.
        self.defaulted = [name for name in PARAM_FIELDS if param_field(name).has_default()]
        for name in self.defaulted:
            self.fields[name].required = False
        # A model field with choices and a default has no empty choice: the radio buttons
        # and dropdowns show the default selected.
        roots = ", ".join(str(r) for r in settings.DATA_ROOTS)
        self.fields["folder"].help_text += f" Allowed roots: {roots}. Start typing: the folders under them are offered."
        # The folders under the data roots, offered as the user types (<datalist id="data-folders">).
        for name in ("folder", "val_folder", "test_folder", "image_folder", "label_folder"):
            self.fields[name].widget.attrs.update(list="data-folders", autocomplete="off")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for name in self.defaulted:
            if data.get(name) in (None, "") and name not in self.errors:
                data[name] = param_field(name).get_default()
        return data

    def params(self) -> dict[str, Any]:
        """The cleaned options (the S3 credential's name, the chosen plugin's options), for
        `dataset_create`."""
        chosen = self.cleaned_data.get("plugin") or ""
        options = {key.rsplit("__", 1)[1]: self.cleaned_data.get(key) for key in self.plugin_fields.get(chosen, [])}
        return {**{name: self.cleaned_data[name] for name in PARAM_FIELDS}, "s3_credential": self.cleaned_data["s3_credential"],
                "plugin_options": {k: v for k, v in options.items() if v not in (None, "")}}

    def source_groups(self) -> list[tuple[str, list[forms.BoundField]]]:
        groups: list[tuple[str, list[forms.BoundField]]] = [
            (source, [self[name] for name in names]) for source, names in self.SOURCE_FIELDS.items()
        ]
        for source, fields in groups:
            if source == Source.PLUGIN:
                fields += [self[key] for keys in self.plugin_fields.values() for key in keys]
        return groups

    def job_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.JOB_FIELDS]

    def split_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.SPLIT_FIELDS]

    def size_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.SIZE_FIELDS]

    def option_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.OPTION_FIELDS]

    @classmethod
    def shown_fields(cls) -> set[str]:
        """Every field the page shows somewhere (a test checks none is left out)."""
        by_source = {n for names in cls.SOURCE_FIELDS.values() for n in names}
        return {*cls.JOB_FIELDS, "source", *by_source, *cls.SPLIT_FIELDS, *cls.SIZE_FIELDS, "resize_mode", *cls.OPTION_FIELDS}

    def uploaded_lists(self) -> dict:
        return {
            name: self.cleaned_data[f"{name}_upload"]
            for name in ("labels_file", "train_list", "val_list", "test_list")
            if self.cleaned_data.get(f"{name}_upload")
        }


def plugin_form_field(option: PluginField, plugin_label: str) -> forms.Field:
    """A data plugin's option as a form field (datasets/plugins.py Field)."""
    common: dict[str, Any] = {"required": False, "label": f"{plugin_label}: {option.label}", "help_text": option.help,
                              "initial": option.default}
    if option.kind == "int":
        return forms.IntegerField(**common)
    if option.kind == "float":
        return forms.FloatField(**common)
    if option.kind == "bool":
        return forms.BooleanField(**common)
    if option.kind == "choice":
        return forms.ChoiceField(choices=[("", "—")] + [(c, c) for c in option.choices], **common)
    field = forms.CharField(max_length=1000, **common)
    if option.kind == "path":
        field.widget.attrs.update(list="data-folders", autocomplete="off")
    return field


class DatasetEditForm(forms.Form):
    name = forms.CharField(max_length=200)
    group = forms.CharField(max_length=100, required=False)
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    visibility = forms.ChoiceField(choices=Visibility.choices, required=False, label="Who may see it")


class S3CredentialForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="What you call it: datasets name it by this.")
    endpoint_url = forms.CharField(
        max_length=500, required=False, label="Endpoint URL",
        help_text="e.g. http://minio.lan:9000 or https://s3.eu-west-1.amazonaws.com; empty: AWS S3.",
    )
    region = forms.CharField(max_length=50, required=False, help_text="Optional, e.g. us-east-1.")
    access_key_id = forms.CharField(max_length=200, label="Access key id")
    secret_access_key = forms.CharField(
        widget=forms.PasswordInput, strip=False, label="Secret access key", help_text="Stored encrypted; never shown again.",
    )
