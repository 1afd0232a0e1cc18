"""What every stage gets: the config, the run directory, the data sources and what the driver learnt up front."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from raydistill.config import RunConfig
from raydistill.data import ImageSource
from raydistill.rundir import RunDir


@dataclass(frozen=True)
class DistilledVariant:
    """One set the run trains students on: the method's own, the random real baseline beside it, the doped set, or
    one of DD-Ranking's hard-label references.

    Attributes:
        prefix: folder inside the run ("" for the method, "baseline", "doped", "reference/full", "reference/hard").
        method: the quantizer that made it ("real" for the whole real training set).
        trains_on: the prefix whose distilled/ its students train on, where not its own ("": the method's set).
        hard_labels: its students learn the labels by cross-entropy, even where train.teacher gives soft labels.
    """

    prefix: str
    method: str
    trains_on: str | None = None
    hard_labels: bool = False

    @property
    def key(self) -> str:
        """Its name in results and Ray Train run names: "method", "baseline", "doped", "full" or "hard"."""
        return self.prefix.rsplit("/", 1)[-1] or "method"

    def folder(self, stage: str) -> str:
        return f"{self.prefix}/{stage}" if self.prefix else stage

    @property
    def distilled(self) -> str:
        """The distilled/ folder its students train on."""
        source = self.prefix if self.trains_on is None else self.trains_on
        return f"{source}/distilled" if source else "distilled"


@dataclass(frozen=True)
class Inputs:
    """Content digests of what a run reads and did not write, so that a file changed in place at the same path
    redoes the stages that read it: the data's and the validation data's listings (paths, sizes, mtimes), the class
    names in their order, and hashes of the prior's and the teacher's weight files ("" for built-in ones; a hub
    id's pinned revision is in its spec)."""

    data: str
    classes: tuple[str, ...]
    prior: str
    teacher: str
    val: str


@dataclass
class Context:
    """Shared by the stages of one run.

    Attributes:
        inputs: content digests of what the run reads (for the stages' fingerprints).
        class_counts: training images per label after `max_per_class`, from the index pass.
        keep_ids: the ids kept by `max_per_class`, or None to keep all.
        latent_shape: (C, h, w) of one latent of the prior at its resolution.
        train_timesteps: length of the prior's noise schedule, or None for an autoencoder-only prior.
        prior_labels: the label a label-conditioned prior is given for each class, where the run conditions one.
        imagenet_classes: each class's ImageNet-1K index, where every class is an ImageNet class (the logits an
            ImageNet teacher keeps for it).
    """

    config: RunConfig
    rundir: RunDir
    inputs: Inputs
    train_source: ImageSource
    val_source: ImageSource | None
    class_names: list[str]
    class_counts: Counter
    keep_ids: frozenset | None
    latent_shape: tuple[int, int, int]
    resolution: int
    train_timesteps: int | None = None
    prior_labels: list[int] | None = None
    imagenet_classes: list[int] | None = None
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def variants(self) -> list[DistilledVariant]:
        """The sets that are quantized, synthesized and trained on: the method's and the random baseline."""
        variants = [DistilledVariant("", self.config.quantize.method)]
        if self.config.evaluate.baseline and self.config.quantize.method != "random":
            variants.append(DistilledVariant("baseline", "random"))
        return variants

    @property
    def doped(self) -> DistilledVariant | None:
        """The method's set with real images added by the dope stage, where doping is on."""
        return DistilledVariant("doped", self.config.quantize.method) if self.config.dope.count else None

    @property
    def references(self) -> list[DistilledVariant]:
        """DD-Ranking's hard-label students, where `evaluate.full_data`: on every real training image, and on the
        method's set where its students learn from a teacher (without one, they are hard-label students already)."""
        if not self.config.evaluate.full_data:
            return []
        references = [DistilledVariant("reference/full", "real", hard_labels=True)]
        if self.config.train.teacher:
            references.append(DistilledVariant("reference/hard", self.config.quantize.method, trains_on="",
                                               hard_labels=True))
        return references

    @property
    def evaluated_variants(self) -> list[DistilledVariant]:
        """Every set whose students the evaluate stage scores."""
        return self.variants + ([self.doped] if self.doped else []) + self.references


@dataclass(frozen=True)
class StageOutput:
    """What a stage reports for its marker: rows written and anything else worth keeping."""

    rows: int
    extra: dict[str, Any] = field(default_factory=dict)
