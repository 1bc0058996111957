"""A training child that does no training: it reports one point and a snapshot-free
summary and exits. bench/scheduler.py runs the real workers with it
(DIGITS_TRAINING_MODULE=bench.noop_train) so only the scheduling path is measured."""
from __future__ import annotations

import json
import sys


def main() -> int:
    print(json.dumps({"event": "train", "rows": [[1, 1.0, {"train_loss": 0.0, "lr": 0.01}]]}), flush=True)
    print(json.dumps({"event": "progress", "progress": 1.0, "eta": 0.0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
