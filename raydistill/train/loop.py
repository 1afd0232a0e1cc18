"""One student's training on a distilled set, epoch by epoch, with no Ray in it (the train stage drives it).

Each worker holds the whole distilled set (it is small by construction) and trains on its share of every
global batch; the weighted loss is normalised over the global batch, so 1 or N workers give the same gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from raydistill.imaging import png_decode
from raydistill.train.augment import augment, mix_batch
from raydistill.train.losses import mixed_weighted_loss


@dataclass
class DistilledSet:
    """A distilled set in memory: uint8 images (N, H, W, 3), int64 labels, float64 training weights."""

    images: np.ndarray
    labels: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_table(cls, table) -> "DistilledSet":
        """From a pyarrow table with `image` (PNG bytes), `label` and `weight` columns."""
        images = np.stack([png_decode(data) for data in table.column("image").to_pylist()])
        return cls(
            images=images,
            labels=table.column("label").to_numpy().astype(np.int64),
            weights=table.column("weight").to_numpy().astype(np.float64),
        )


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    temperature: float
    min_crop_scale: float
    seed: int
    mix: str = "cutmix"
    mix_alpha: float = 1.0
    lr_schedule: str = "cosine"


# How the learning rate falls over training, as a factor of the peak at progress p in [0, 1]: a cosine to zero, or
# RDED's and D3HR's half cosine, 0.5 (1 + cos(pi p / 2)), which ends at half the peak.
LR_SCHEDULES = {
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
    "half_cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p / 2)),
}


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW parameter groups: weight decay on weight matrices and kernels only, none on norm layers' scales and
    shifts or on biases (1-d parameters), as RDED and timm's recipes train."""
    decayed, exempt = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decayed if parameter.ndim > 1 else exempt).append(parameter)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


def batches_for_epoch(n: int, batch_size: int, epoch: int, seed: int, rank: int, world: int) -> list[np.ndarray]:
    """This worker's rows of each global batch of one epoch.

    The epoch's permutation is the same on every worker (seeded by seed and epoch); it is padded by wrapping to
    whole global batches so every worker takes the same number of steps, and global batch b is split across
    workers by stride.
    """
    order = np.random.default_rng([seed, epoch]).permutation(n)
    global_batch = min(batch_size, n)
    steps = math.ceil(n / global_batch)
    order = np.resize(order, steps * global_batch).reshape(steps, global_batch)
    return [row[rank::world] for row in order]


def checkpoint_due(epoch: int, epochs: int, every: int, interval_passed: bool) -> bool:
    """Whether to checkpoint after `epoch`: always after the last one; otherwise at every `every`-th epoch once the
    checkpoint interval has passed since the last checkpoint (on a GPU a small set's epoch takes a fraction of a
    second, a checkpoint of the model and its optimiser to object storage far longer)."""
    return epoch == epochs or (epoch % every == 0 and interval_passed)


def rank_zero_decides(flag: bool, device: torch.device) -> bool:
    """Rank 0's `flag` on every worker (a decision taken on each worker's clock must not differ between them: every
    worker reports a checkpoint together)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    decided = torch.tensor([int(flag)], device=device)
    torch.distributed.broadcast(decided, src=0)
    return bool(decided.item())


def memory_format(device: torch.device) -> torch.memory_format:
    """The layout of the student's, the teacher's and the batches' tensors: channels_last on CUDA, where cuDNN runs
    bf16 convolutions on tensor cores without transposing; the CPU keeps the default layout."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


class StudentTrainer:
    """AdamW (no decay on norms and biases) with a per-step schedule (`LR_SCHEDULES`) on the per-sample weighted
    loss, optionally against an online teacher. The models come in `memory_format(device)` on the device;
    `compile_models` runs them through torch.compile."""

    def __init__(self, model: torch.nn.Module, data: DistilledSet, settings: TrainSettings,
                 teacher: torch.nn.Module | None = None, device: torch.device = torch.device("cpu"),
                 rank: int = 0, world: int = 1, compile_models: bool = False):
        if compile_models:
            model = torch.compile(model)
            teacher = torch.compile(teacher) if teacher is not None else None
        self.model, self.data, self.settings, self.teacher = model, data, settings, teacher
        self.device, self.rank, self.world = device, rank, world
        self.memory_format = memory_format(device)
        epoch_batches = batches_for_epoch(len(data.labels), settings.batch_size, 0, 0, 0, 1)
        self.steps_per_epoch = len(epoch_batches)
        self.images_per_epoch = sum(map(len, epoch_batches))  # over all workers, padded to whole batches
        self.optimizer = torch.optim.AdamW(decay_groups(model, settings.weight_decay), lr=settings.lr)
        total_steps, factor = settings.epochs * self.steps_per_epoch, LR_SCHEDULES[settings.lr_schedule]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: factor(step / total_steps))
        # The distilled set is small: it lives on the device, and augmentation runs there.
        self.images = torch.from_numpy(data.images).permute(0, 3, 1, 2).contiguous().to(device)
        self.epoch = 0

    def train_epoch(self) -> dict[str, float]:
        """Runs the next epoch and returns its mean loss and learning rate."""
        s = self.settings
        generator = torch.Generator().manual_seed(s.seed * 100_003 + self.epoch * 7 + self.rank)
        mix_rng = np.random.default_rng([s.seed, self.epoch, self.rank])
        self.model.train()
        losses = []
        for rows in batches_for_epoch(len(self.data.labels), s.batch_size, self.epoch, s.seed, self.rank, self.world):
            images = augment(self.images[rows].float() / 255.0, self.images.shape[-1], s.min_crop_scale, generator)
            labels = torch.from_numpy(self.data.labels[rows]).to(self.device)
            weights = torch.from_numpy(self.data.weights[rows]).float().to(self.device)
            images, partner, lam = mix_batch(images, s.mix, s.mix_alpha, mix_rng)
            images = images.contiguous(memory_format=self.memory_format)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                teacher_logits = None
                if self.teacher is not None:
                    # Soft labels come online from the teacher's view of the very (mixed) images the student sees.
                    with torch.no_grad():
                        teacher_logits = self.teacher(images)
                logits = self.model(images)
            loss = mixed_weighted_loss(logits, labels, weights, partner, lam, teacher_logits, s.temperature)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            losses.append(loss.detach() / self.world)
        # Each worker's loss is its share of the global weighted mean; the sum over workers is that mean.
        epoch_loss = torch.stack(losses).mean()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(epoch_loss)
        self.epoch += 1
        return {"epoch": self.epoch, "loss": float(epoch_loss), "lr": self.scheduler.get_last_lr()[0]}

    def state_dict(self) -> dict:
        return {
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
        }

    def load_state_dict(self, state: dict) -> None:
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = state["epoch"]


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The student itself, out of torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)
