"""Live progress bars on a terminal (count, rate, ETA): quantize's classes and each student's epochs with its loss.
Where stderr is no terminal (a job log, a file) there are none; the stage and student lines say enough there."""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Iterator

import ray
from tqdm import tqdm


def terminal() -> bool:
    return sys.stderr.isatty()


def progress_bar(total: int, description: str, unit: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=description, unit=unit, disable=not enabled, leave=False, dynamic_ncols=True)


@ray.remote(num_cpus=0)
class EpochProgress:
    """Rank 0 of a Ray Train run tells it each finished epoch and its loss; the driver's bar reads it."""

    def __init__(self):
        self.epoch, self.loss = 0, None

    def update(self, epoch: int, loss: float) -> None:
        self.epoch, self.loss = epoch, loss

    def read(self) -> tuple[int, float | None]:
        return self.epoch, self.loss


@contextlib.contextmanager
def epoch_bar(epochs: int, description: str, enabled: bool) -> Iterator["ray.actor.ActorHandle | None"]:
    """Yields an EpochProgress for the training workers (None where not `enabled`) and draws its bar, updated twice
    a second, until the block ends."""
    if not enabled:
        yield None
        return
    progress = EpochProgress.remote()
    stop = threading.Event()

    def follow() -> None:
        with progress_bar(epochs, description, "epoch", enabled=True) as bar:
            while not stop.wait(0.5):
                epoch, loss = ray.get(progress.read.remote())
                bar.update(epoch - bar.n)
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.4f}")

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        yield progress
    finally:
        stop.set()
        thread.join()
        ray.kill(progress)
