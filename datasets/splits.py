"""Split rules: stratified train/val/test percentages, minimum and maximum per class.

Pure and deterministic for a given seed, so a cloned dataset gets the same split.
"""
from __future__ import annotations

import random
from collections import Counter

from .sources import Item

SPLITS = ("train", "val", "test")
Splits = dict[str, list[Item]]


def split_stratified(items: list[Item], val_percent: float, test_percent: float, seed: int) -> Splits:
    """Per class, round(n × %) images go to validation and to test. Where the class is big
    enough, every requested split gets at least one image of it and training keeps at
    least one (training first, then validation, then test)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Item]] = {}
    for item in items:
        by_class.setdefault(item[1], []).append(item)
    out: Splits = {split: [] for split in SPLITS}
    for label in sorted(by_class):
        group = by_class[label]
        rng.shuffle(group)
        n = len(group)
        avail = max(n - 1, 0)  # training keeps at least one image
        base_val = 1 if val_percent > 0 and avail >= 1 else 0
        base_test = 1 if test_percent > 0 and avail - base_val >= 1 else 0
        n_val = min(max(base_val, round(n * val_percent / 100.0)), avail - base_test)
        n_test = min(max(base_test, round(n * test_percent / 100.0)), avail - n_val)
        out["val"].extend(group[:n_val])
        out["test"].extend(group[n_val : n_val + n_test])
        out["train"].extend(group[n_val + n_test :])
    for split in out.values():
        rng.shuffle(split)
    return out


def drop_small_classes(labels: list[str], splits: Splits, min_per_class: int) -> tuple[list[str], Splits, list[dict]]:
    """Leave out classes with fewer than `min_per_class` images in all splits together,
    renumbering the rest. Returns the kept labels, the splits and a report of dropped ones."""
    totals: Counter[int] = Counter(label for items in splits.values() for _, label in items)
    dropped = [
        {"label": name, "images": totals[i], "reason": f"fewer than {min_per_class} images"}
        for i, name in enumerate(labels)
        if totals[i] < min_per_class
    ]
    if not dropped:
        return labels, splits, []
    keep = [i for i in range(len(labels)) if totals[i] >= min_per_class]
    renumber = {old: new for new, old in enumerate(keep)}
    new_splits = {s: [(p, renumber[lab]) for p, lab in items if lab in renumber] for s, items in splits.items()}
    return [labels[i] for i in keep], new_splits, dropped


def cap_per_class(splits: Splits, max_per_class: int) -> Splits:
    """Keep at most `max_per_class` images of each class in each split (the first ones in
    the split's already shuffled order)."""
    out: Splits = {}
    for split, items in splits.items():
        seen: Counter[int] = Counter()
        kept = []
        for item in items:
            if seen[item[1]] < max_per_class:
                seen[item[1]] += 1
                kept.append(item)
        out[split] = kept
    return out
