from __future__ import annotations

from typing import Any

from django import forms
from django.conf import settings

from .spec import DEFAULTS
from .models import Encoding, ImageMode, ResizeMode, Source

RESIZE_HELP = {
    ResizeMode.SQUASH: "Stretch to the size; the aspect ratio changes.",
    ResizeMode.CROP: "Keep the aspect ratio, scale to cover the size, cut the overflow evenly from both sides.",
    ResizeMode.FILL: "Keep the aspect ratio, scale to fit inside the size, pad the short side with uniform random noise.",
    ResizeMode.HALF_CROP: "Scale by the mean of the two ratios: crop the long side, noise-pad the short side.",
}

LIST_HELP = "Lines of `path label_index`; relative paths are taken under the image folder."


class DatasetForm(forms.Form):
    # Which fields belong to which source: the template shows one group at a time.
    SOURCE_FIELDS = {
        Source.FOLDER: ["folder", "val_folder", "test_folder"],
        Source.TEXTFILE: [
            "labels_file", "labels_file_upload", "train_list", "train_list_upload", "val_list", "val_list_upload",
            "test_list", "test_list_upload", "image_folder", "shuffle",
        ],
        Source.UPLOAD: ["upload"],
    }

    name = forms.CharField(max_length=200)
    group = forms.CharField(max_length=100, required=False, help_text="Optional: jobs with the same group are shown together.")
    notes = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}))
    source = forms.ChoiceField(choices=Source.choices, initial=Source.FOLDER, widget=forms.RadioSelect)

    folder = forms.CharField(
        max_length=1000, required=False, label="Training images folder",
        help_text="A server folder with one subfolder of images per class (sorted subfolder names become the labels; nested folders are walked).",
    )
    val_folder = forms.CharField(max_length=1000, required=False, label="Separate validation folder (optional)")
    test_folder = forms.CharField(max_length=1000, required=False, label="Separate test folder (optional)")
    val_percent = forms.FloatField(min_value=0, max_value=99, initial=DEFAULTS.val_percent, label="% for validation",
                                   help_text="Per class, and at least one image per class where possible. "
                                   "Not used when separate validation/test folders are given.")
    test_percent = forms.FloatField(min_value=0, max_value=99, initial=DEFAULTS.test_percent, label="% for test")

    labels_file = forms.CharField(max_length=1000, required=False, label="Labels file (server path)",
                                  help_text="Line i is the name of label i.")
    labels_file_upload = forms.FileField(required=False, label="… or upload the labels file")
    train_list = forms.CharField(max_length=1000, required=False, label="Training list (server path)", help_text=LIST_HELP)
    train_list_upload = forms.FileField(required=False, label="… or upload the training list")
    val_list = forms.CharField(max_length=1000, required=False, label="Validation list (server path, optional)")
    val_list_upload = forms.FileField(required=False, label="… or upload the validation list")
    test_list = forms.CharField(max_length=1000, required=False, label="Test list (server path, optional)")
    test_list_upload = forms.FileField(required=False, label="… or upload the test list")
    image_folder = forms.CharField(max_length=1000, required=False, label="Image folder (optional)",
                                   help_text="Prefix for relative paths in the lists.")
    shuffle = forms.BooleanField(required=False, initial=DEFAULTS.shuffle, help_text="Shuffle the order of each list.")

    upload = forms.CharField(required=False, widget=forms.HiddenInput)

    image_width = forms.IntegerField(min_value=1, max_value=4096, initial=DEFAULTS.width, label="Width")
    image_height = forms.IntegerField(min_value=1, max_value=4096, initial=DEFAULTS.height, label="Height")
    image_mode = forms.ChoiceField(choices=ImageMode.choices, initial=ImageMode.COLOR, label="Image type")
    resize_mode = forms.ChoiceField(
        choices=ResizeMode.choices, initial=DEFAULTS.resize_mode, widget=forms.RadioSelect,
        help_text=" ".join(f"{m.label.split(' (')[0]}: {h}" for m, h in RESIZE_HELP.items()),
    )
    encoding = forms.ChoiceField(choices=Encoding.choices, initial=DEFAULTS.encoding, label="Image encoding")
    jpeg_quality = forms.IntegerField(min_value=1, max_value=100, initial=DEFAULTS.jpeg_quality, label="JPEG quality")
    min_per_class = forms.IntegerField(min_value=0, initial=DEFAULTS.min_per_class, label="Minimum images per class",
                                       help_text="Classes with fewer images (all splits together) are left out and reported. 0: keep all.")
    max_per_class = forms.IntegerField(min_value=0, initial=DEFAULTS.max_per_class, label="Maximum images per class, per split",
                                       help_text="0: no limit.")
    seed = forms.IntegerField(initial=DEFAULTS.seed, min_value=0, max_value=2**63 - 1, help_text="Same seed, same split and same noise padding.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in self.DEFAULTED:
            self.fields[name].required = False
        roots = ", ".join(str(r) for r in settings.DATA_ROOTS)
        self.fields["folder"].help_text += f" Allowed roots: {roots}."

    # Fields that fall back to their initial value when a post leaves them out.
    DEFAULTED = (
        "source", "val_percent", "test_percent", "image_width", "image_height", "image_mode", "resize_mode",
        "encoding", "jpeg_quality", "min_per_class", "max_per_class", "seed",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        for name in self.DEFAULTED:
            if data.get(name) in (None, "") and name not in self.errors:
                data[name] = self.fields[name].initial
        return data

    def source_groups(self) -> list[tuple[str, list]]:
        return [(source, [self[name] for name in names]) for source, names in self.SOURCE_FIELDS.items()]

    SPLIT_FIELDS = ("val_percent", "test_percent")  # folder and archive sources

    def split_fields(self) -> list:
        return [self[name] for name in self.SPLIT_FIELDS]

    def common_fields(self) -> list:
        grouped = {n for names in self.SOURCE_FIELDS.values() for n in names} | {"source", "upload", *self.SPLIT_FIELDS}
        return [self[name] for name in self.fields if name not in grouped]

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
