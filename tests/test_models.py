"""Students and teachers: every student forward, the real CIFAR ResNet teachers, timm weight files, and bad input."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from raydistill.errors import UserError
from raydistill.train.models import Normalized, create_student, list_students, load_teacher

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RESNET_DIR = SHARED / "weights" / "cifar10-resnet"
CIFAR_TEST = SHARED / "data" / "cifar10" / "test-00000-of-00002.parquet"


def _cifar(rows: range) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 test images at ``rows`` as float RGB in [0, 1], (n, 3, 32, 32), and their labels."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(CIFAR_TEST, columns=["image", "label"]).take(list(rows))
    arrays = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in table.column("image").to_pylist()]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return images, torch.tensor(table.column("label").to_pylist())


@pytest.mark.parametrize("name", list_students() + ["resnet18"])
def test_every_student_maps_images_to_logits(name):
    torch.manual_seed(0)
    model = create_student(name, num_classes=7, image_size=32)
    logits = model(torch.rand(2, 3, 32, 32))
    assert logits.shape == (2, 7) and torch.isfinite(logits).all()
    logits.sum().backward()  # trainable from scratch: every parameter gets a gradient
    assert all(p.grad is not None for p in model.parameters())


def test_convnet3_adapts_its_classifier_to_the_image_size():
    model = create_student("convnet3", num_classes=10, image_size=64)
    assert model.classifier.in_features == 128 * 8 * 8
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(UserError, match=r"image_size >= 8; got 4"):
        create_student("convnet3", num_classes=10, image_size=4)


def test_cifar_resnets_have_the_published_sizes():
    sizes = {name: sum(p.numel() for p in create_student(name, 10, 32).parameters())
             for name in ("cifar-resnet20", "cifar-resnet56")}
    assert sizes == {"cifar-resnet20": 269_722, "cifar-resnet56": 853_018}  # 0.27M and 0.85M in He et al. 2016


def test_rdeds_cifar_resnet18_teacher_loads_and_matches_its_reference(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)  # built as RDED and D3HR build resnet18_modified
    reference.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    reference.maxpool = torch.nn.Identity()
    reference.eval()
    file = tmp_path / "cifar10_resnet18_modified.pth"
    torch.save({"model": reference.state_dict(), "epoch": 200}, file)  # RDED's checkpoint layout
    teacher = load_teacher(f"resnet18-modified:{file}", num_classes=10, trust_pickles=True)
    images = torch.rand(2, 3, 32, 32)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(teacher(images), reference((images - mean) / std))
    assert sum(p.numel() for p in teacher.parameters()) == 11_173_962  # CIFAR ResNet-18's 11.17M
    with pytest.raises(UserError, match=r"pass resnet18-modified:FILE with RDED's cifar10_resnet18_modified.pth"):
        load_teacher("resnet18-modified", num_classes=10)


def test_timm_students_are_wrapped_with_normalisation():
    model = create_student("resnet18", num_classes=3, image_size=32)
    assert isinstance(model, Normalized) and model.model.num_classes == 3


@pytest.mark.parametrize("name", ["cifar-resnet20", "cifar-resnet56"])
def test_real_cifar_teachers_are_accurate(name):
    weights = RESNET_DIR / f"{name.removeprefix('cifar-')}.safetensors"
    if not (weights.is_file() and CIFAR_TEST.is_file()):
        pytest.skip("../shared is absent")
    teacher = load_teacher(f"{name}:{weights}", num_classes=10)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    # The shard is sorted by class (500 airplanes first), so take every 10th row: 50 images of each class.
    images, labels = _cifar(range(0, 5000, 10))
    assert labels.bincount().tolist() == [50] * 10
    with torch.no_grad():
        accuracy = (teacher(images).argmax(1) == labels).float().mean().item()
    assert accuracy >= 0.75, f"{name} top-1 {accuracy:.3f} on 500 test images (NOTES.md: 0.81/0.83 on all 10000)"


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_teacher_loads_a_local_file(tmp_path, suffix):
    torch.manual_seed(0)
    model = create_student("resnet18", num_classes=4, image_size=32).eval()
    file = tmp_path / f"teacher{suffix}"
    if suffix == ".safetensors":
        save_file(model.model.state_dict(), str(file))
    else:  # the layout of a typical DDP training script
        torch.save({"state_dict": {f"module.{k}": v for k, v in model.model.state_dict().items()}}, file)
    teacher = load_teacher(f"resnet18:{file}", num_classes=4, trust_pickles=suffix == ".pth")
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(images), model(images))


def test_unknown_student_lists_ours_and_mentions_timm():
    with pytest.raises(UserError, match=r"unknown student 'no-such-net'; ours are cifar-resnet20, cifar-resnet56, "
                                        r"convnet3, resnet18-modified, and any timm model name works"):
        create_student("no-such-net", num_classes=10, image_size=32)
    with pytest.raises(UserError, match=r"num_classes must be a positive integer; got 0"):
        create_student("convnet3", num_classes=0, image_size=32)


def test_bad_teacher_specs_say_what_to_pass(tmp_path):
    with pytest.raises(UserError, match=r"pass cifar-resnet20:FILE"):
        load_teacher("cifar-resnet20", num_classes=10)
    with pytest.raises(UserError, match=r"unknown teacher 'no-such-net'.*timm model name"):
        load_teacher("no-such-net:/x.pth", num_classes=10)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(UserError, match=rf"{re.escape(str(missing))} not found"):
        load_teacher(f"cifar-resnet56:{missing}", num_classes=10)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_teacher_file_is_named(tmp_path, suffix):
    file = tmp_path / f"bad{suffix}"
    file.write_bytes(b"\x00garbage, not weights\xff" * 20)
    with pytest.raises(UserError, match=rf"could not read teacher weights file {re.escape(str(file))}"):
        load_teacher(f"cifar-resnet56:{file}", num_classes=10, trust_pickles=True)


def test_mismatched_teacher_weights_are_named(tmp_path):
    resnet20 = tmp_path / "resnet20.safetensors"
    save_file(create_student("cifar-resnet20", 10, 32).state_dict(), str(resnet20))
    path = re.escape(str(resnet20))
    with pytest.raises(UserError, match=rf"{path} does not match cifar-resnet56 with 10 classes: missing keys"):
        load_teacher(f"cifar-resnet56:{resnet20}", num_classes=10)
    with pytest.raises(UserError, match=rf"{path} has tensors of the wrong shape for cifar-resnet20 with 100 classes"):
        load_teacher(f"cifar-resnet20:{resnet20}", num_classes=100)
