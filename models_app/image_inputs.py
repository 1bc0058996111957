"""The images of a "classify many" run that does not read a dataset split (DIGITS'
classify_many): a text list of `path [label]` lines on the server, or uploaded images and
archives. Pure functions over files, used by the evaluation child (models_app/evaluate.py).

Every line or file that cannot be used is reported, with its line number, and the run goes
on without it. Ground truth that is not a class (-1, or past the last class) is reported
too, and that image is still classified, only left out of the accuracy figures."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from datasets.imaging import IMAGE_EXTENSIONS
from datasets.sources import is_under

NO_LABEL = -1


@dataclass(frozen=True)
class Input:
    path: str  # the file to read
    name: str  # as the user named it: the list's path, the uploaded file's name
    label: int = NO_LABEL  # the class index, or NO_LABEL
    line: int | None = None  # its line in the list


@dataclass(frozen=True)
class Problem:
    reason: str
    text: str  # the line, or the file's name
    line: int | None = None
    classified: bool = False  # True: the image was used anyway (only its ground truth was bad)

    def as_dict(self) -> dict[str, object]:
        return {"line": self.line, "text": self.text, "reason": self.reason, "classified": self.classified}


def _label(token: str, labels: list[str]) -> int | None:
    """A ground-truth token: a class index, or a class name. None: it is not one (then the
    token belongs to the path, which may contain spaces)."""
    if token.lstrip("-").isdecimal():
        return int(token)
    return labels.index(token) if token in labels else None


def parse_classify_list(
    text: str, labels: list[str], image_folder: Path | None, roots: list[Path]
) -> tuple[list[Input], list[Problem]]:
    """`path [label]` lines; the label is a class index or name. Relative paths are taken
    under `image_folder`. Every image must lie under a data root once links are resolved."""
    inputs: list[Input] = []
    problems: list[Problem] = []
    for lineno, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        label, raw, bad_label = NO_LABEL, line, None
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and (token := _label(parts[1], labels)) is not None:
            raw = parts[0]
            if 0 <= token < len(labels):
                label = token
            else:
                bad_label = token
        image = Path(raw)
        if not image.is_absolute():
            if image_folder is None:
                problems.append(Problem("a relative path, and no image folder was given", line, lineno))
                continue
            image = image_folder / image
        resolved = image.resolve()
        if not is_under(resolved, roots):
            problems.append(Problem("outside the allowed data roots", line, lineno))
        elif not resolved.is_file():
            problems.append(Problem("file not found", line, lineno))
        elif resolved.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(Problem("not an image file (by its extension)", line, lineno))
        else:
            if bad_label is not None:
                problems.append(Problem(
                    f"ground truth {bad_label} is not a class (0 to {len(labels) - 1}); classified without it", line, lineno,
                    classified=True,
                ))
            inputs.append(Input(str(resolved), raw, label, lineno))
    return inputs, problems


def gather_files(root: Path, labels: list[str]) -> tuple[list[Input], list[Problem]]:
    """Every file under `root` (uploaded images, or an extracted archive), in name order.
    A file inside a folder named like a class has that class as its ground truth (an
    archive of class folders, as for a dataset); others have none."""
    inputs: list[Input] = []
    problems: list[Problem] = []
    for path in sorted(p for p in root.rglob("*") if not p.is_dir()):
        name = str(path.relative_to(root))
        if path.is_symlink():
            problems.append(Problem("a symbolic link (not followed)", name))
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            problems.append(Problem("not an image file (by its extension)", name))
        else:
            folders = path.relative_to(root).parts[:-1]
            label = next((labels.index(f) for f in reversed(folders) if f in labels), NO_LABEL)
            inputs.append(Input(str(path), name, label))
    return inputs, problems
