from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from workers.models import Visibility

from .models import PARAM_FIELDS, Dataset, ResizeMode, Source, param_field

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
        """The cleaned options, for `dataset_create`."""
        return {name: self.cleaned_data[name] for name in PARAM_FIELDS}

    def source_groups(self) -> list[tuple[str, list[forms.BoundField]]]:
        return [(source, [self[name] for name in names]) for source, names in self.SOURCE_FIELDS.items()]

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


class DatasetEditForm(forms.Form):
    name = forms.CharField(max_length=200)
    group = forms.CharField(max_length=100, required=False)
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    visibility = forms.ChoiceField(choices=Visibility.choices, required=False, label="Who may see it")
