"""manage.py synthetic_shapes OUT: images of shapes with detection and segmentation labels
(datasets/synthetic.py), to try those dataset kinds without data of one's own."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets.synthetic import write_shapes


class Command(BaseCommand):
    help = "Write synthetic shapes images with KITTI labels, COCO JSON, masks and a class list."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("out", type=Path, help="folder to write (created; must be empty or new)")
        parser.add_argument("--count", type=int, default=300)
        parser.add_argument("--size", type=int, default=64, help="side of the square images, in pixels")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--max-shapes", type=int, default=3, help="at most this many shapes per image")

    def handle(self, *args: Any, **options: Any) -> None:
        out: Path = options["out"]
        if out.exists() and any(out.iterdir()):
            raise CommandError(f"{out} is not empty; pick a new folder.")
        if not 16 <= options["size"] <= 4096 or options["count"] < 1:
            raise CommandError("--size must be 16 to 4096 and --count at least 1.")
        objects = write_shapes(out, options["count"], options["size"], options["seed"], options["max_shapes"])
        summary = ", ".join(f"{n} {kind}s" for kind, n in objects.items())
        self.stdout.write(f"Wrote {options['count']} images with {summary} to {out}.")
