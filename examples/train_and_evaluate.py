#!/usr/bin/env python3
"""Make a dataset, train a model on it, wait for it, and evaluate it: the Python client
of DIGITS-NG (digits_cli.client), which is what the `digits` command is built on.

    DIGITS_URL=http://gpu-box:8000 DIGITS_TOKEN=... python examples/train_and_evaluate.py /data/shapes

(or run `digits login` once instead of setting DIGITS_URL and DIGITS_TOKEN). The folder is
a server folder of class subfolders, under one of the server's data roots.
"""
from __future__ import annotations

import sys

from digits_cli.client import ApiError, Client


def main(folder: str) -> int:
    api = Client.from_env()
    try:
        dataset = api.dataset_create(name="shapes", folder=folder, image_width=28, image_height=28, val_percent=20)
        dataset = api.wait(dataset["id"], kind="dataset")
        if dataset["job"]["status"] != "done":
            print("the dataset did not build:", dataset["job"]["error"], file=sys.stderr)
            return 1
        print(f"dataset #{dataset['id']}: {dataset['counts']}")

        model = api.model_create(name="lenet-shapes", dataset=dataset["id"], network="lenet", epochs=5, batch_size=16,
                                 learning_rate=0.01, lr_policy="cosine")
        model = api.wait(model["id"], kind="model",
                         on_update=lambda m: print(f"  {m['job']['status']} {m['job']['progress']:.0%}", end="\r"))
        if model["job"]["status"] != "done":
            print("\ntraining failed:", model["job"]["error"], file=sys.stderr)
            return 1
        print(f"\nmodel #{model['id']}: best validation accuracy {model['best_val_accuracy']:.1%} at epoch {model['best_epoch']:g}")

        evaluation = api.evaluate(model["id"], split="val")
        evaluation = api.wait(evaluation["id"], kind="evaluation")
        metrics = evaluation["metrics"]
        print(f"evaluation #{evaluation['id']}: top-1 {metrics['top1']:.1%} on {metrics['images']} images")
        for label, recall in zip(evaluation["labels"], metrics["per_class"]["recall"]):
            print(f"  {label:>12}: recall {recall:.1%}")
    except ApiError as exc:
        print("error:", exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
