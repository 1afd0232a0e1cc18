"""Issue 23: the batched RandomResizedCrop draws torchvision's crop distribution and resamples as its resize does."""

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms.v2 import functional as TF

from raydistill.train import augment as augment_module
from raydistill.train.augment import augment, crop_boxes

HEIGHT, WIDTH, DRAWS = 40, 48, 20_000  # not square: the width and height limits differ


def test_crop_boxes_draw_torchvision_distribution_of_area_aspect_and_place():
    ours = crop_boxes(DRAWS, HEIGHT, WIDTH, 0.08, torch.Generator().manual_seed(0)).numpy()
    left, top, w, h = ours[:, 0], ours[:, 1], ours[:, 2] - ours[:, 0], ours[:, 3] - ours[:, 1]
    assert (left >= 0).all() and (top >= 0).all() and (ours[:, 2] <= WIDTH).all() and (ours[:, 3] <= HEIGHT).all()
    torch.manual_seed(0)
    image = torch.empty(3, HEIGHT, WIDTH)
    theirs = np.array([RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(DRAWS)])
    t_top, t_left, t_h, t_w = theirs.T
    for name, mine, reference in (("area", w * h, t_w * t_h), ("aspect", w / h, t_w / t_h),
                                  ("centre x", left + w / 2, t_left + t_w / 2),
                                  ("centre y", top + h / 2, t_top + t_h / 2)):
        assert ks_2samp(mine, reference).pvalue > 1e-3, name
    # The test has power: the same statistic tells a narrower scale range apart.
    narrower = crop_boxes(DRAWS, HEIGHT, WIDTH, 0.2, torch.Generator().manual_seed(0)).numpy()
    narrow_area = (narrower[:, 2] - narrower[:, 0]) * (narrower[:, 3] - narrower[:, 1])
    assert ks_2samp(narrow_area, t_w * t_h).pvalue < 1e-6


def test_whole_image_crops_return_the_image_or_its_mirror():
    images = torch.rand(16, 3, 12, 12)
    out = augment(images, 12, 1.0, torch.Generator().manual_seed(0))
    same = (out - images).abs().flatten(1).amax(1) < 1e-5
    mirrored = (out - images.flip(-1)).abs().flatten(1).amax(1) < 1e-5
    assert (same | mirrored).all() and same.any() and mirrored.any()


def test_a_crop_resamples_as_torchvision_resized_crop(monkeypatch):
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 8, 8), size=(32, 32), mode="bilinear")
    top, left, height, width = 3, 5, 20, 17
    box = torch.tensor([[left, top, left + width, top + height]], dtype=torch.float64)
    monkeypatch.setattr(augment_module, "crop_boxes", lambda *args: box)
    ours = augment(smooth, 32, 0.08, torch.Generator().manual_seed(0))[0]
    theirs = TF.resized_crop(smooth[0], top, left, height, width, [32, 32], antialias=True)
    difference = torch.minimum((ours - theirs).abs().mean(), (ours - theirs.flip(-1)).abs().mean())
    assert difference.item() == pytest.approx(0, abs=0.005)  # only the crop's border pixels may differ
