"""Students and teachers: small-image networks of the distillation literature, timm models, and loading weights.

Every model takes float RGB in [0, 1], shape (N, 3, H, W), and normalises inside, so that teacher and student are fed
the same tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torchvision.models.resnet import BasicBlock as TorchvisionBasicBlock
from torchvision.models.resnet import ResNet

from raydistill.data.classes import IMAGENET_CLASSES
from raydistill.errors import UserError
from raydistill.registry import Registry
from raydistill.weights import TRUST_PICKLES_HINT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A factory takes (num_classes, image_size) and returns a freshly initialised model.
StudentFactory = Callable[[int, int], nn.Module]

STUDENTS: Registry[StudentFactory] = Registry("student")

# Our architectures whose weights do not depend on the image size, so a weights file alone defines them as teachers;
# each with the release its weights come from.
_FILE_TEACHERS = {
    "cifar-resnet20": "a .safetensors file of the CIFAR ResNet release",
    "cifar-resnet56": "a .safetensors file of the CIFAR ResNet release",
    "resnet18-modified": "RDED's cifar10_resnet18_modified.pth (with --trust-pickles) or its .safetensors conversion",
}


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std``; the constants are not saved in state dicts, so released weights load as is."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Normalized(nn.Module):
    """Puts a ``Normalize`` in front of a model that expects normalised input (timm); its keys gain ``model.``."""

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))


class ConvNet3(nn.Module):
    """The ConvNet of the dataset-distillation literature (Gidaris & Komodakis 2018; used by DC, DM, MTT, ...).

    ``depth`` blocks of [3x3 conv, instance norm, ReLU, 2x2 average pool], then a linear classifier.
    """

    def __init__(self, num_classes: int, image_size: int, width: int = 128, depth: int = 3):
        super().__init__()
        self.normalize = Normalize()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [
                nn.Conv2d(3 if i == 0 else width, width, 3, padding=1),
                # GroupNorm with one channel per group is instance norm with a learnable affine, as in the papers.
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2, 2),
            ]
        self.features = nn.Sequential(*layers)
        side = image_size // 2**depth
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)).flatten(1))


class _ShortcutA(nn.Module):
    """Option-A shortcut of He et al. 2016: subsample by 2 and zero-pad the channels (no weights)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = _ShortcutA(planes // 4)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016, Sec. 4.2) with the key names of Yerlan Idelbayev's release (conv1, bn1, layer1-3,
    linear), so its pretrained ResNet-20/56 weights load strictly. Depth is 6n + 2.
    """

    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        n = (depth - 2) // 6
        self.normalize = Normalize()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ModifiedResNet18(ResNet):
    """RDED's and D3HR's CIFAR ResNet-18 (their ``resnet18_modified``): torchvision's ResNet-18 with a 3x3 stride-1
    stem and no max-pool, so a 32 px image keeps its detail. Its keys are torchvision's, so RDED's CIFAR teachers load
    strictly; it normalises with ImageNet's statistics, as they do for CIFAR too."""

    def __init__(self, num_classes: int):
        super().__init__(TorchvisionBasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()
        self.normalize = Normalize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.normalize(x))


@STUDENTS.register("convnet3")
def convnet3(num_classes: int, image_size: int) -> nn.Module:
    """ConvNet-3 (width 128, instance norm, average pooling)."""
    if image_size < 8:
        raise UserError(f"convnet3 pools the image three times by 2, so it needs image_size >= 8; got {image_size}")
    return ConvNet3(num_classes, image_size)


@STUDENTS.register("cifar-resnet20")
def cifar_resnet20(num_classes: int, image_size: int) -> nn.Module:
    """CIFAR ResNet-20 (option-A shortcuts); any image size works (global pooling)."""
    return CifarResNet(20, num_classes)


@STUDENTS.register("cifar-resnet56")
def cifar_resnet56(num_classes: int, image_size: int) -> nn.Module:
    """CIFAR ResNet-56 (option-A shortcuts); any image size works (global pooling)."""
    return CifarResNet(56, num_classes)


@STUDENTS.register("resnet18-modified")
def resnet18_modified(num_classes: int, image_size: int) -> nn.Module:
    """RDED's and D3HR's CIFAR ResNet-18 (3x3 stem, no max-pool); any image size works (global pooling)."""
    return ModifiedResNet18(num_classes)


def _check_positive(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{what} must be a positive integer; got {value!r}")


def create_student(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Builds a randomly initialised student that takes RGB in [0, 1].

    Args:
        name: One of ``list_students()``, or any timm model name (created with ``pretrained=False``).
        num_classes: Number of output logits.
        image_size: Side of the square training images (sets the classifier input of ``convnet3``).

    Returns:
        The model; timm models are wrapped in ``Normalized`` (their parameters under ``model.``).

    Raises:
        UserError: If the name is neither ours nor a timm model, or a size is not a positive integer.
    """
    _check_positive("num_classes", num_classes)
    _check_positive("image_size", image_size)
    if name in STUDENTS:
        return STUDENTS.get(name)(num_classes, image_size)
    import timm

    if timm.is_model(name):
        return Normalized(timm.create_model(name, pretrained=False, num_classes=num_classes))
    raise UserError(f"unknown student {name!r}; ours are {', '.join(list_students())}, and any timm model name works "
                    f"too (see timm.list_models())")


def list_students() -> list[str]:
    """Returns our registered student names (timm names are accepted as well)."""
    return STUDENTS.names()


class ClassSubset(nn.Module):
    """A teacher's logits restricted to some of its classes, in the data's label order (an ImageNet-1K teacher
    for ImageNette keeps 10 of its 1,000 logits), so a subset gets soft labels with no teacher training."""

    def __init__(self, model: nn.Module, classes: Sequence[int]):
        super().__init__()
        self.model = model
        self.register_buffer("classes", torch.tensor(list(classes), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.classes]


def load_teacher(spec: str, num_classes: int, imagenet_classes: Sequence[int] | None = None,
                 trust_pickles: bool = False) -> nn.Module:
    """Loads a pretrained teacher, frozen and in eval mode, taking RGB in [0, 1].

    Args:
        spec: ``"cifar-resnet20:FILE"`` or ``"cifar-resnet56:FILE"`` (safetensors from the CIFAR ResNet release),
            ``"resnet18-modified:FILE"`` (RDED's CIFAR ResNet-18), ``"TIMM_NAME:FILE"`` (a timm architecture with a
            local ``.safetensors`` state dict, or a ``.pth``/``.pt`` one where ``trust_pickles``, normalised with
            ImageNet statistics), or ``"TIMM_NAME"`` alone (timm's pretrained weights from the hub, normalised with
            the statistics of their pretrained config). Split at the first colon.
        num_classes: Number of classes the teacher must predict; must match the weights, unless
            ``imagenet_classes`` lets an ImageNet-1K teacher serve a subset of its classes.
        trust_pickles: read a torch checkpoint (a pickle) as well as safetensors.
        imagenet_classes: each class's ImageNet-1K index, where every class of the data is an ImageNet class: a
            timm teacher with 1,000 outputs then predicts these of its logits, in this order.

    Returns:
        The teacher, with ``requires_grad`` off for every parameter.

    Raises:
        UserError: If the name is unknown, the file is missing, unreadable or does not match the architecture, or the
            hub weights cannot be fetched or have a different number of classes.
    """
    _check_positive("num_classes", num_classes)
    if spec.startswith(("hf-hub:", "hf_hub:")):  # timm's own hub prefix, not NAME:FILE
        name, file = spec, ""
    else:
        name, _, file = spec.partition(":")
    if name in _FILE_TEACHERS:
        if not file:
            raise UserError(f"teacher {name!r} has no built-in weights: pass {name}:FILE with "
                            f"{_FILE_TEACHERS[name]}")
        model = STUDENTS.get(name)(num_classes, 32)
        state = _read_state_dict(Path(file).expanduser(), trust_pickles)
        _load_strict(model, state, file, f"{name} with {num_classes} classes")
    else:
        model = _timm_teacher(name, file, num_classes, imagenet_classes, trust_pickles)
    return model.eval().requires_grad_(False)


def _timm_teacher(name: str, file: str, num_classes: int, imagenet_classes: Sequence[int] | None,
                  trust_pickles: bool) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise UserError(f"unknown teacher {name!r}: pass {' or '.join(f'{n}:FILE' for n in _FILE_TEACHERS)}, "
                        f"or a timm model name (see timm.list_models()), optionally as NAME:FILE with local weights")
    if file:
        state = _read_state_dict(Path(file).expanduser(), trust_pickles)
        outputs = _classifier_outputs(name, state) or num_classes
        model = timm.create_model(name, pretrained=False, num_classes=outputs)
        _load_strict(model, state, file, f"timm {name} with {outputs} classes")
        model = Normalized(model)
    else:
        try:
            model = timm.create_model(name, pretrained=True)
        except Exception as e:  # hub, network and cache failures come as many types; the fix is the same for all
            raise UserError(f"could not load pretrained weights for teacher {name!r} ({e}): pass {name}:FILE with a "
                            f"local weights file (.safetensors, .pth or .pt)") from e
        outputs = model.num_classes
        cfg = model.pretrained_cfg or {}
        model = Normalized(model, cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    if outputs == num_classes:
        return model
    if imagenet_classes is not None and outputs == IMAGENET_CLASSES:
        return ClassSubset(model, imagenet_classes)
    # Asking timm for another num_classes would silently put a random head on the trained body.
    subset = "" if imagenet_classes is None else " (an ImageNet-1K teacher with 1000 outputs serves this subset)"
    raise UserError(f"teacher {name!r} predicts {outputs} classes but the dataset has {num_classes}{subset}: pass "
                    f"{name}:FILE with weights trained on this dataset's classes")


def _classifier_outputs(name: str, state: dict[str, torch.Tensor]) -> int | None:
    """Classes a timm architecture's state dict predicts, read off its classifier's weight (timm names the
    classifier in each model's pretrained config)."""
    import timm

    classifier = getattr(timm.models.get_pretrained_cfg(name), "classifier", None)
    weight = state.get(f"{classifier}.weight") if isinstance(classifier, str) else None
    return int(weight.shape[0]) if weight is not None and weight.ndim == 2 else None


def _read_state_dict(file: Path, trust_pickles: bool) -> dict[str, torch.Tensor]:
    """Reads a state dict from .safetensors or, where pickles are trusted, a torch checkpoint, unwrapping the usual
    training-script containers."""
    hint = "pass NAME:FILE with a .safetensors file (or a torch state dict, .pth/.pt, with --trust-pickles)"
    if not file.is_file():
        raise UserError(f"teacher weights file {file} not found: {hint}")
    if file.suffix != ".safetensors" and not trust_pickles:
        raise UserError(f"teacher weights file {file} is not .safetensors but a torch checkpoint: "
                        f"{TRUST_PICKLES_HINT}")
    try:
        if file.suffix == ".safetensors":
            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip readers each raise their own types for a corrupt file
        raise UserError(f"could not read teacher weights file {file} ({e}): {hint}") from e
    # Training scripts often save {"state_dict": ...} or {"model": ...}.
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"teacher weights file {file} does not hold a state dict of tensors: {hint}")
    # DataParallel/DDP checkpoints prefix every key with "module.".
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], file: str, what: str) -> None:
    wanted = set(model.state_dict())
    # Checkpoints from before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked; load_state_dict fills it in.
    missing = sorted(k for k in wanted - set(state) if not k.endswith(".num_batches_tracked"))
    unexpected = sorted(set(state) - wanted)
    if missing or unexpected:
        raise UserError(f"teacher weights file {file} does not match {what}: missing keys {missing[:5]}, unexpected "
                        f"keys {unexpected[:5]} ({len(missing)} and {len(unexpected)} in all)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"teacher weights file {file} has tensors of the wrong shape for {what}: {e}") from e
