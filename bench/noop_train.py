"""A training child that does no training: it reports one point and exits, so only the
scheduling path is measured (bench/scheduler.py runs the real workers with
DIGITS_TRAINING_MODULE=bench.noop_train). With 1000 epochs or more it instead runs until
it is killed, reporting progress, for the abort-latency measurement."""
from __future__ import annotations

import json
import sys
import time

from workers import protocol


def main() -> int:
    spec = json.loads(open(sys.argv[sys.argv.index("--spec") + 1]).read())
    if spec.get("epochs", 1) >= 1000:  # run until aborted
        while True:
            protocol.emit(protocol.Progress(progress=0.0))
            sys.stdout.flush()
            time.sleep(0.2)
    protocol.emit(protocol.TrainRows(rows=[[1, 1.0, {"train_loss": 0.0, "lr": 0.01}]]))
    protocol.emit(protocol.Progress(progress=1.0, eta=0.0))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
