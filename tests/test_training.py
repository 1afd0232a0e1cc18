"""Issue 5: mixing with weights, the weighted loss across worker counts, exact resume of the training loop and the
checkpoints kept (a killed training run: tests/test_faults.py)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.fs as pafs
import pytest
import torch
from ray.train import Checkpoint

from raydistill.checkpoints import load_state, remove_unregistered_checkpoints, save_state
from raydistill.train.augment import mix_batch
from raydistill.train.loop import checkpoint_due
from raydistill.train.losses import mixed_weighted_loss, per_sample_loss, weighted_mean

from ddp_rank import batch_and_model  # tests/ is on sys.path under pytest's default import mode


def constant_images(n=8, size=16):
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size).clone()


def test_cutmix_lambda_is_the_share_of_own_pixels():
    images = constant_images()
    for seed in range(5):
        mixed, partner, lam = mix_batch(images, "cutmix", 1.0, np.random.default_rng(seed))
        for i in range(8):
            own = (mixed[i] == i).float().mean().item()
            if partner[i] != i:
                assert own == pytest.approx(lam)
            assert set(mixed[i].unique().tolist()) <= {float(i), float(partner[i])}


def test_mixup_is_a_convex_combination_and_none_is_identity():
    images = constant_images()
    mixed, partner, lam = mix_batch(images, "mixup", 0.4, np.random.default_rng(0))
    torch.testing.assert_close(mixed, lam * images + (1 - lam) * images[partner])
    same, partner, lam = mix_batch(images, "none", 1.0, np.random.default_rng(0))
    assert same is images and lam == 1.0 and partner.tolist() == list(range(8))


def test_mixed_samples_combine_weights_and_hard_labels_by_lambda():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    weights = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    partner, lam = torch.tensor([1, 0, 3, 2, 5, 4]), 0.7
    mixed_w = lam * weights + (1 - lam) * weights[partner]
    ce = torch.nn.functional.cross_entropy
    expected_losses = lam * ce(logits, labels, reduction="none") + (1 - lam) * ce(logits, labels[partner], reduction="none")
    expected = (mixed_w * expected_losses).sum() / mixed_w.sum()
    got = mixed_weighted_loss(logits, labels, weights, partner, lam, None, 20.0)
    assert got.item() == pytest.approx(expected.item())
    teacher = torch.randn(6, 4)
    soft = mixed_weighted_loss(logits, labels, weights, partner, lam, teacher, 4.0)
    assert soft.item() == pytest.approx(weighted_mean(per_sample_loss(logits, labels, teacher, 4.0), mixed_w).item())
    unmixed = mixed_weighted_loss(logits, labels, weights, torch.arange(6), 1.0, None, 1.0)
    assert unmixed.item() == pytest.approx(weighted_mean(per_sample_loss(logits, labels, None, 1.0), weights).item())


def test_two_workers_give_the_gradient_of_one_and_take_rank_zeros_checkpoint_decision(tmp_path):
    x, y, w, model = batch_and_model()
    weighted_mean(per_sample_loss(model(x), y, None, 1.0), w).backward()
    single = [p.grad for p in model.parameters()]
    out = tmp_path / "grads.pt"
    script = Path(__file__).with_name("ddp_rank.py")
    ranks = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(tmp_path / "init"), str(out)])
             for r in range(2)]
    assert [rank.wait(timeout=120) for rank in ranks] == [0, 0]
    for a, b in zip(single, torch.load(out)):
        torch.testing.assert_close(a, b)
    # The naive mean of per-worker weighted means differs: the weights are not split evenly between the workers.
    naive = 0.5 * sum(weighted_mean(per_sample_loss(model(x[r::2]), y[r::2], None, 1.0), w[r::2]) for r in range(2))
    assert abs(naive.item() - weighted_mean(per_sample_loss(model(x), y, None, 1.0), w).item()) > 1e-3


def tiny_trainer(epochs=6, mix="cutmix", compile_models=False):
    from raydistill.train.loop import DistilledSet, StudentTrainer, TrainSettings
    from raydistill.train.models import create_student

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 10)
    images = np.where(labels[:, None, None, None] == 0, 40, 210) + rng.integers(0, 40, (20, 16, 16, 3))
    data = DistilledSet(images.astype(np.uint8), labels, np.full(20, 0.1))
    settings = TrainSettings(epochs=epochs, batch_size=8, lr=1e-3, weight_decay=0.01, temperature=20.0,
                             min_crop_scale=0.5, seed=0, mix=mix, mix_alpha=1.0)
    torch.manual_seed(0)
    return StudentTrainer(create_student("convnet3", 2, 16), data, settings, compile_models=compile_models)


def test_student_trainer_learns_and_resumes_exactly(tmp_path):
    trainer = tiny_trainer(mix="none")
    assert (trainer.steps_per_epoch, trainer.images_per_epoch) == (3, 24)  # 20 images wrapped to 3 batches of 8
    losses = [trainer.train_epoch()["loss"] for _ in range(3)]
    assert losses[-1] < losses[0]
    resumed = tiny_trainer(mix="none")
    # Through files, as the checkpoint does: a state dict shares the live tensors.
    save_state(trainer.state_dict(), str(tmp_path))
    resumed.load_state_dict(load_state(str(tmp_path)))
    assert resumed.epoch == 3
    assert resumed.train_epoch()["loss"] == pytest.approx(trainer.train_epoch()["loss"], rel=1e-6)
    cutmix = tiny_trainer()
    assert np.isfinite([cutmix.train_epoch()["loss"] for _ in range(2)]).all()


def test_a_compiled_trainer_saves_and_loads_the_students_own_state(tmp_path):
    """train.compile wraps the student; checkpoints and model.safetensors must still hold its plain parameter names,
    so an eager run resumes from a compiled one and `load_student` reads either (torch.compile compiles lazily, at
    the first batch: this test costs no compilation)."""
    compiled, eager = tiny_trainer(compile_models=True), tiny_trainer()
    assert type(compiled.model).__name__ == "OptimizedModule"
    assert list(compiled.state_dict()["model"]) == list(eager.state_dict()["model"])
    save_state(eager.state_dict(), str(tmp_path))
    compiled.load_state_dict(load_state(str(tmp_path)))


@pytest.mark.parametrize("epoch, every, interval_passed, due", [
    (10, 1, False, True),   # the last epoch, always
    (3, 1, False, False),   # the interval has not passed
    (3, 1, True, True),
    (3, 2, True, False),    # not a checkpoint_every-th epoch
    (4, 2, True, True),
])
def test_checkpoint_due_after_the_last_epoch_and_every_nth_once_the_interval_passed(epoch, every, interval_passed, due):
    assert checkpoint_due(epoch, 10, every, interval_passed) is due


def test_checkpoints_a_crash_left_unregistered_are_removed_and_the_kept_ones_stay(tmp_path):
    for name in ("checkpoint_1", "checkpoint_2", "checkpoint_3", "checkpoint_4"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.json").write_text("{}")
    (tmp_path / "checkpoint_manager_snapshot.json").write_text("{}")
    kept = [(Checkpoint(str(tmp_path / name)), {}) for name in ("checkpoint_3", "checkpoint_4")]
    remove_unregistered_checkpoints(pafs.LocalFileSystem(), str(tmp_path), SimpleNamespace(best_checkpoints=kept))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_3", "checkpoint_4",
                                                          "checkpoint_manager_snapshot.json"]


def test_no_weight_decay_on_norm_layers_and_biases():
    from raydistill.train.loop import decay_groups
    from raydistill.train.models import create_student

    model = create_student("resnet18", 10, 32)
    decayed, exempt = decay_groups(model, 0.01)
    named = dict(model.named_parameters())
    exempt_names = {name for name, p in named.items() if any(p is q for q in exempt["params"])}
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.01, 0.0)
    assert "model.bn1.weight" in exempt_names and "model.fc.bias" in exempt_names
    assert "model.fc.weight" not in exempt_names and "model.conv1.weight" not in exempt_names
    assert len(decayed["params"]) + len(exempt["params"]) == len(named)


@pytest.mark.parametrize("schedule, middle, end", [("cosine", 0.5, 0.0), ("half_cosine", 0.5 * (1 + 2**-0.5), 0.5)])
def test_lr_schedules_per_step(schedule, middle, end):
    from dataclasses import replace

    trainer = tiny_trainer(epochs=2, mix="none")
    trainer = type(trainer)(trainer.model, trainer.data, replace(trainer.settings, lr_schedule=schedule))
    total = 2 * trainer.steps_per_epoch
    lrs = []
    for _ in range(total):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.scheduler.step()
    lrs.append(trainer.optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[total // 2] == pytest.approx(1e-3 * middle)
    assert lrs[-1] == pytest.approx(1e-3 * end, abs=1e-12)
