"""Data plugins: new kinds of dataset source, from installed packages, without touching
the core (DIGITS' data extensions, e.g. its Sunnybrook DICOM plugin).

A plugin package declares an entry point in the group `digits.data_plugins`:

    [project.entry-points."digits.data_plugins"]
    dicom-segmentation = "digits_dicom:DicomSegmentation"

naming a subclass of `DataPlugin`, which says:
  - `name`, `label`, `task` ("classification" or "segmentation") and `fields`: the options
    a person fills in (served as a form on the new-dataset page and as a typed object in the
    API schema); a `path` field must lie under a data root (checked before the plugin sees it);
  - `check()`: are the options usable (raise `PluginInputError(field, message)`); it runs in
    the web process when the dataset is made, so it must be quick;
  - `labels()`: the class names (segmentation: optionally `colours()`, one [r, g, b] each);
  - `entries()`: every item, as anything picklable that `load` understands;
  - `load(entry)`: (image as an HxW or HxWxC uint8 array, label: a class index, or an HxW
    uint8 array of class ids for segmentation, 255 meaning "ignore"), raising any
    exception for an entry it cannot read (reported with `describe(entry)`, then left out).

The build child loads each entry in parallel, writes it as PNG files, and builds them as a
folder source: the same resizing, splits by the percentages, LMDB, mean image, reports.
Plugins are discovered once per process; one that fails to import or is not a DataPlugin
is listed with its error (the plugins page) and left out: start-up never fails for it.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, ClassVar

import numpy as np

log = logging.getLogger(__name__)

GROUP = "digits.data_plugins"
FIELD_KINDS = ("text", "path", "int", "float", "bool", "choice")


@dataclass(frozen=True)
class Field:
    """One option of a plugin: its form field and API property."""

    name: str
    label: str
    kind: str = "text"  # text | path (a server folder or file under a data root) | int | float | bool | choice
    help: str = ""
    required: bool = True
    default: Any = None
    choices: tuple[str, ...] = ()


class PluginInputError(Exception):
    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field


class DataPlugin:
    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    task: ClassVar[str] = "classification"
    fields: ClassVar[tuple[Field, ...]] = ()

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def check(self) -> None:
        """Raise PluginInputError for options that cannot work."""

    def labels(self) -> list[str]:
        raise NotImplementedError

    def colours(self) -> list[tuple[int, int, int]]:
        """Segmentation: each class's colour (default: DIGITS' palette)."""
        return []

    def entries(self) -> list[Any]:
        raise NotImplementedError

    def load(self, entry: Any) -> tuple[np.ndarray, int | np.ndarray]:
        raise NotImplementedError

    def describe(self, entry: Any) -> str:
        """How reports name an entry (a file name, a record id)."""
        return str(entry)


@dataclass
class Discovered:
    plugins: dict[str, Any] = field(default_factory=dict)  # name -> the plugin's class
    failures: list[dict[str, str]] = field(default_factory=list)  # {"name", "value", "error"}


_FOUND: dict[str, Discovered] = {}


def discovered(group: str, base: type, refresh: bool = False) -> Discovered:
    """The plugins of `group` (subclasses of `base`), found once per process."""
    if group not in _FOUND or refresh:
        _FOUND[group] = discover_group(group, base)
    return _FOUND[group]


def data_plugins(refresh: bool = False) -> Discovered:
    """The installed data plugins and those that failed to load."""
    return discovered(GROUP, DataPlugin, refresh)


def discover_group(group: str, base: type) -> Discovered:
    """The entry points of `group` that load to a subclass of `base` named as the entry point."""
    found = Discovered()
    for point in sorted(entry_points(group=group), key=lambda p: p.name):
        try:
            loaded: Any = point.load()
            if not (isinstance(loaded, type) and issubclass(loaded, base)):
                raise TypeError(f"{point.value} is not a subclass of {base.__module__}.{base.__name__}")
            named = getattr(loaded, "name", "")
            if named != point.name:
                raise TypeError(f"its name is {named!r}, its entry point's {point.name!r}: they must agree")
            for f in getattr(loaded, "fields", ()):
                if f.kind not in FIELD_KINDS:
                    raise TypeError(f"field {f.name!r} has kind {f.kind!r}, not one of {', '.join(FIELD_KINDS)}")
            found.plugins[point.name] = loaded
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, never fatal
            last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
            where = f" ({last[0].filename}:{last[0].lineno})" if last else ""
            found.failures.append({"name": point.name, "value": point.value, "error": f"{type(exc).__name__}: {exc}{where}"})
            log.warning("plugin %s (%s) not loaded: %s: %s", point.name, point.value, type(exc).__name__, exc)
    return found


def data_plugin(name: str) -> type[DataPlugin]:
    plugins = data_plugins().plugins
    if name not in plugins:
        have = ", ".join(plugins) or "none is installed"
        raise KeyError(f"No data plugin named {name!r} ({have}).")
    return plugins[name]
