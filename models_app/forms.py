from __future__ import annotations

from django import forms

from datasets.selectors import dataset_usable_list

from .models import Network, Solver


class ModelForm(forms.Form):
    name = forms.CharField(max_length=200)
    dataset = forms.ModelChoiceField(queryset=dataset_usable_list(), help_text="A built dataset, or one still building (training waits for it).")
    network = forms.ChoiceField(choices=Network.choices, initial=Network.LENET)
    solver = forms.ChoiceField(choices=Solver.choices, initial=Solver.SGD)
    epochs = forms.IntegerField(min_value=1, max_value=10_000, initial=10)
    batch_size = forms.IntegerField(min_value=1, max_value=65_536, initial=64)
    learning_rate = forms.FloatField(min_value=1e-12, max_value=10, initial=0.01, help_text="0.01 suits LeNet with SGD.")
    momentum = forms.FloatField(min_value=0, max_value=0.9999, initial=0.9)
    weight_decay = forms.FloatField(min_value=0, max_value=0.9999, initial=0.0)
    seed = forms.IntegerField(initial=0, help_text="Same seed and data on CPU gives the same curves.")

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.fields["dataset"].label_from_instance = lambda d: f"{d.job.name} ({d.job.status}, #{d.pk})"


class ClassifyForm(forms.Form):
    image = forms.ImageField()
    epoch = forms.TypedChoiceField(coerce=int, required=False, empty_value=None)

    def __init__(self, *args, epochs: list[int] | None = None, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.fields["epoch"].choices = [("", "latest")] + [(e, f"epoch {e}") for e in (epochs or [])]
