from __future__ import annotations

from django import forms
from django.conf import settings

from .models import ImageMode, ResizeMode


class DatasetForm(forms.Form):
    name = forms.CharField(max_length=200)
    folder = forms.CharField(
        max_length=1000,
        help_text="A server folder with one subfolder of images per class (subfolder names become the labels).",
    )
    image_width = forms.IntegerField(min_value=1, max_value=4096, initial=28)
    image_height = forms.IntegerField(min_value=1, max_value=4096, initial=28)
    image_mode = forms.ChoiceField(choices=ImageMode.choices, initial=ImageMode.COLOR)
    resize_mode = forms.ChoiceField(choices=ResizeMode.choices, initial=ResizeMode.SQUASH)
    val_percent = forms.FloatField(min_value=0, max_value=99, initial=25, label="% for validation")

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        roots = ", ".join(str(r) for r in settings.DATA_ROOTS)
        self.fields["folder"].help_text += f" Allowed roots: {roots}."
