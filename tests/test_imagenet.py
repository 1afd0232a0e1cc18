"""ImageNet as users hold it: wnid folders, ImageNet class identity for DiT labels, SD prompts and teachers, the
prior reading originals at its own resolution, and ImageNet's evaluation crop."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from conftest import invoke
from raydistill.config import load_config
from raydistill.data.classes import display_name, imagenet_indices, prior_labels
from raydistill.data.transforms import decode_image
from raydistill.errors import UserError
from raydistill.imaging import to_tensor
from raydistill.pipeline import prepare, validate
from raydistill.priors import load_prior
from raydistill.stages.encode import actor_prior, class_conditioning, class_records

# ImageNette's ten classes (fastai's release) as wnid folders, and their ImageNet-1K indices.
IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
              "n03425413", "n03445777", "n03888257"]
IMAGENETTE_LABELS = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]


def photo(seed: int, width: int, height: int) -> Image.Image:
    """A smooth, seeded RGB picture (gradients and a disc), so resizing has detail to keep or lose."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(rng.uniform(2, 12) * x + rng.uniform(2, 12) * y + rng.uniform(0, 6)) for _ in range(3)]
    image = (np.stack(channels, -1) + 1) * 127.5
    cx, cy, r = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height, rng.uniform(0.1, 0.3) * height
    disc = (np.mgrid[0:height, 0:width][1] - cx) ** 2 + (np.mgrid[0:height, 0:width][0] - cy) ** 2 < r * r
    image[disc] = rng.uniform(0, 255, 3)
    return Image.fromarray(image.astype(np.uint8))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def imagenette(tmp_path_factory):
    """An ImageNette-shaped ImageFolder: train/<wnid>/ with two images each and val/<wnid>/ with one."""
    root = tmp_path_factory.mktemp("imagenette")
    for split, count in (("train", 2), ("val", 1)):
        for c, wnid in enumerate(IMAGENETTE):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{wnid}_{i}.png").write_bytes(png(photo(100 * c + i, 96 + 8 * i, 72)))
    return root


def test_imagenette_wnids_are_imagenet_classes_with_names():
    assert imagenet_indices(IMAGENETTE) == IMAGENETTE_LABELS
    assert [display_name(w) for w in IMAGENETTE[:3]] == ["tench", "English springer", "cassette player"]
    assert imagenet_indices(["tench", "English springer"]) == [0, 217]  # unique ImageNet names work too
    assert imagenet_indices(["crane"]) is None  # two ImageNet classes are called crane: only the wnid says which
    assert imagenet_indices(["airplane", "n01440764"]) is None
    assert display_name("airplane") == "airplane"


def test_dit_receives_the_imagenet_labels_of_wnid_folders(imagenette, saved_dit):
    """The driver maps the classes once; an actor's prior hands the DiT ImageNet's labels for dataset labels 0..9."""
    config = load_config(overrides=[{"data": {"train": str(imagenette)}, "prior": {"spec": f"dit:{saved_dit}"},
                                     "quantize": {"method": "d3hr", "ipc": 2}, "out": str(imagenette / "run")}])
    ctx = prepare(config)
    assert ctx.prior_labels == IMAGENETTE_LABELS
    records = class_records(ctx.class_names, ctx.prior_labels, ctx.imagenet_classes)  # class_names.json's rows
    assert [r["prior_label"] for r in records] == IMAGENETTE_LABELS
    assert records[1] == {"label": 1, "name": "n02102040", "display_name": "English springer", "prior_label": 217,
                          "imagenet_index": 217}
    prior = actor_prior(ctx.config.prior.spec, ctx.resolution, 1, class_conditioning(ctx))
    seen = []
    prior.denoiser.register_forward_hook(lambda module, args, kwargs, out: seen.append(kwargs["class_labels"]),
                                         with_kwargs=True)
    latents = torch.randn(10, *prior.latent_shape)
    prior.predict_noise(latents, 500, torch.arange(10), guidance=4.0)
    conditional, unconditional = seen[0].chunk(2)
    assert conditional.tolist() == IMAGENETTE_LABELS
    assert unconditional.tolist() == [1000] * 10  # DiT's null class


def test_classes_a_dit_cannot_map_fail_before_ray_naming_class_map(tmp_path, saved_dit):
    for name in ("airplane", "truck"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "data" / name / f"{i}.png").write_bytes(png(photo(i, 40, 40)))
    base = {"data": {"train": str(tmp_path / "data")}, "prior": {"spec": f"dit:{saved_dit}"},
            "quantize": {"method": "d3hr", "ipc": 2}, "out": str(tmp_path / "run")}
    with pytest.raises(UserError, match=r"classes \['airplane', 'truck'\].*are not classes of prior.*prior\.class_map"):
        prepare(load_config(overrides=[base]))
    with pytest.raises(UserError, match=r"prior.class_map names classes the data does not have: \['ship'\]"):
        prepare(load_config(overrides=[base, {"prior": {"class_map": {"airplane": 404, "ship": 510}}}]))
    with pytest.raises(UserError, match=r"labels outside prior .*0\.\.999: \{'truck': 1000\}"):
        prepare(load_config(overrides=[base, {"prior": {"class_map": {"airplane": 404, "truck": 1000}}}]))
    with pytest.raises(UserError, match=r"prior.class_map has no label for classes \['truck'\]"):
        prepare(load_config(overrides=[base, {"prior": {"class_map": {"airplane": 404}}}]))
    ctx = prepare(load_config(overrides=[base, {"prior": {"class_map": {"airplane": 404, "truck": 867}}}]))
    assert ctx.prior_labels == [404, 867]
    with pytest.raises(UserError, match="drop prior.class_map"):
        prepare(load_config(overrides=[base, {"prior": {"spec": "tiny", "class_map": {"airplane": 1}},
                                              "quantize": {"method": "ddoq"}}]))


def test_class_map_from_the_command_line(tmp_path, saved_dit):
    """`--set prior.class_map=...` parses as a mapping and reaches the prior labels."""
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(2):
            (tmp_path / "data" / name / f"{i}.png").write_bytes(png(photo(i, 40, 40)))
    from click.testing import CliRunner

    from raydistill.cli import cli

    result = CliRunner().invoke(cli, ["run", "--data", str(tmp_path / "data"), "--prior", f"dit:{saved_dit}",
                                      "--method", "d3hr", "--ipc", "2", "--out", str(tmp_path / "run"),
                                      "--set", "prior.class_map={cat: 281, dog: 1001}"])
    assert isinstance(result.exception, UserError) and "labels outside prior" in str(result.exception)
    assert "{'dog': 1001}" in str(result.exception)


def test_prompts_of_a_text_prior_use_imagenet_names(saved_sd):
    prior = load_prior(f"sd:{saved_sd}")
    prior.use_class_names(["n01440764", "goldfinch"], "a photo of a {name}", "cartoon")
    expected = prior.embed(["a photo of a tench", "a photo of a goldfinch"])
    torch.testing.assert_close(prior.class_embeddings, expected)


def test_an_imagenet_teacher_serves_a_subset_through_its_logits(tmp_path):
    import timm
    from safetensors.torch import save_file

    from raydistill.train.models import load_teacher

    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "r18.safetensors")
    spec = f"resnet18.tv_in1k:{tmp_path / 'r18.safetensors'}"
    full, subset = load_teacher(spec, 1000), load_teacher(spec, 10, IMAGENETTE_LABELS)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(subset(x), full(x)[:, IMAGENETTE_LABELS])
    with pytest.raises(UserError, match="predicts 1000 classes but the dataset has 10"):
        load_teacher(spec, 10)


def test_the_encoder_sees_the_original_at_the_prior_resolution(ray_local, tmp_path):
    """A 64-px prior encodes each original resized and cropped to 64 px, not the students' 16-px thumbnail blown up;
    an image smaller than 64 px is upsampled and counted."""
    sizes = {"a": [(128, 96), (96, 160)], "b": [(200, 120), (48, 40)]}
    originals = {}
    for name, shapes in sizes.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            image = photo(len(originals), w, h)
            (tmp_path / "data" / name / f"{i}.png").write_bytes(png(image))
            originals[f"{name}/{i}.png"] = image
    out = tmp_path / "run"
    invoke("encode", "--data", str(tmp_path / "data"), "--prior", "tiny", "--set", "prior.resolution=64",
           "--set", "data.image_size=16", "--ipc", "1", "--out", str(out))
    marker = json.loads((out / "latents" / "_SUCCESS.json").read_text())
    assert marker["latent_shape"] == [4, 32, 32] and marker["upsampled_images"] == 1
    assert marker["upsampled_examples"] == ["b/1.png"]
    table = pq.read_table(out / "latents").to_pylist()
    stage = {row["id"]: np.array(row["latent"], dtype=np.float32) for row in table}
    prior = load_prior("tiny", 64)
    for image_id, image in originals.items():
        direct = TF.center_crop(TF.resize(image, 64, interpolation=InterpolationMode.BICUBIC), 64)
        expected = prior.encode(to_tensor(np.asarray(direct)[None])).flatten().numpy()
        # The actor and this process may split the convolutions over other thread counts: float32 noise ~2e-5.
        np.testing.assert_allclose(stage[image_id], expected, atol=1e-4)
        thumbnail = prior.encode(to_tensor(decode_image(png(image), 16)[None], 64)).flatten().numpy()
        assert np.abs(stage[image_id] - thumbnail).mean() > 0.05


def test_validation_uses_imagenets_centre_crop_for_imagenet_sized_students():
    image = photo(3, 500, 375)
    expected = TF.center_crop(TF.resize(image, 256, interpolation=InterpolationMode.BICUBIC), 224)
    np.testing.assert_array_equal(decode_image(png(image), 224, crop_ratio=0.875), np.asarray(expected))
    def crop(**data):
        return validate(load_config(overrides=[{"data": data}] if data else [])).evaluate.crop_ratio

    assert crop(image_size=224) == 0.875
    assert crop() == 1.0  # 32 px: CIFAR is evaluated on the whole image
    assert validate(load_config(overrides=[{"data": {"image_size": 224},
                                            "evaluate": {"crop_ratio": 1}}])).evaluate.crop_ratio == 1
    with pytest.raises(UserError, match="evaluate.crop_ratio must be in"):
        validate(load_config(overrides=[{"evaluate": {"crop_ratio": 1.2}}]))


def test_prior_labels_of_a_prior_trained_here_follow_its_class_names():
    assert prior_labels(["cat", "dog"], ["dog", "cat", "ship"], 3, "dit:P") == [1, 0]
    with pytest.raises(UserError, match="does not say which class each of its 3 labels is"):
        prior_labels(["cat"], None, 3, "dit:P")
