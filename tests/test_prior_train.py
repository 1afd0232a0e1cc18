"""`raydistill prior train` and `prior eval`: the loss falls, a killed training resumes, the output loads as a prior."""

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import invoke, kill_process_tree, wait_for_registered_checkpoint
from raydistill.config import PriorTrainSettings
from raydistill.errors import UserError
from raydistill.priors import load_prior
from raydistill.priors.diffusion import DiffusionPrior, linear_schedule, noise_from_output
from raydistill.priors.training import (
    build_dit, denoising_loss, disable_builtin_label_dropout, ema_copy, ema_decay_at, ema_update, is_held_out,
    warmup_factor,
)
from raydistill.stages.prior_train import denoiser_builder

RAYDISTILL = str(Path(sys.executable).parent / "raydistill")
TEACHER = Path(__file__).resolve().parents[1].parent / "shared/weights/cifar10-resnet/resnet56.safetensors"


def test_a_few_steps_lower_the_loss_and_the_ema_follows():
    torch.manual_seed(0)
    model = build_dit("tiny", (4, 8, 8), num_classes=3)
    disable_builtin_label_dropout(model)
    ema = ema_copy(model)
    alphas = torch.tensor(linear_schedule(), dtype=torch.float32)
    labels = torch.arange(3).repeat(16)
    latents = labels.view(-1, 1, 1, 1).float() - 1 + 0.1 * torch.randn(48, 4, 8, 8)  # one mode per class

    def held_out_loss(m):
        with torch.no_grad():
            return float(denoising_loss(m, latents, labels, alphas, 3, 0.0, torch.Generator().manual_seed(1)))

    before = held_out_loss(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(60):
        loss = denoising_loss(model, latents, labels, alphas, 3, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema_update(ema, model, ema_decay_at(step, 0.99))
    assert held_out_loss(model) < 0.7 * before
    assert held_out_loss(ema) < before
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1) and ema_decay_at(10**6, 0.999) == 0.999


class ZeroPredictor(torch.nn.Module):
    """Predicts no noise, so each sample's error is the mean square of the noise that was added."""

    def forward(self, noisy, timesteps, class_labels):
        self.timesteps = timesteps
        return types.SimpleNamespace(sample=torch.zeros_like(noisy))


def test_min_snr_weights_each_sample_by_min_snr_gamma_over_snr():
    alphas = torch.tensor(linear_schedule(), dtype=torch.float32)
    latents, labels, model = torch.randn(64, 2, 4, 4), torch.zeros(64, dtype=torch.long), ZeroPredictor()
    plain = denoising_loss(model, latents, labels, alphas, 1, 0.0, torch.Generator().manual_seed(3))
    weighted = denoising_loss(model, latents, labels, alphas, 1, 0.0, torch.Generator().manual_seed(3), snr_gamma=5.0)
    generator = torch.Generator().manual_seed(3)  # the same draws as inside: timesteps, then noise
    timesteps = torch.randint(0, len(alphas), (64,), generator=generator)
    errors = torch.randn(latents.shape, generator=generator).pow(2).flatten(1).mean(1)
    snr = alphas[timesteps] / (1 - alphas[timesteps])
    assert torch.equal(model.timesteps, timesteps)
    torch.testing.assert_close(plain, errors.mean())
    torch.testing.assert_close(weighted, (errors * snr.clamp(max=5.0) / snr).mean())
    assert weighted < plain  # low-noise steps (SNR above gamma) count for less


def test_min_snr_on_velocity_weights_the_clean_latent_error_by_min_snr_gamma():
    alphas = torch.tensor(linear_schedule(), dtype=torch.float32)
    latents, labels, model = torch.randn(64, 2, 4, 4), torch.zeros(64, dtype=torch.long), ZeroPredictor()
    weighted = denoising_loss(model, latents, labels, alphas, 1, 0.0, torch.Generator().manual_seed(3), snr_gamma=5.0,
                              prediction_type="v_prediction")
    generator = torch.Generator().manual_seed(3)
    alpha = alphas[torch.randint(0, len(alphas), (64,), generator=generator)].view(-1, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    # A zero velocity means the clean estimate sqrt(a) x_t; weight * v error = min(SNR, 5) * clean-latent error.
    clean_errors = (alpha.sqrt() * noisy - latents).pow(2).flatten(1).mean(1)
    snr = (alpha / (1 - alpha)).flatten()
    torch.testing.assert_close(weighted, (snr.clamp(max=5.0) * clean_errors).mean())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_each_prediction_type_converts_to_the_true_noise(prediction_type):
    alpha, clean, noise = 0.3, torch.randn(4, 2, 3, 3), torch.randn(4, 2, 3, 3)
    noisy = alpha**0.5 * clean + (1 - alpha) ** 0.5 * noise
    output = {"epsilon": noise, "v_prediction": alpha**0.5 * noise - (1 - alpha) ** 0.5 * clean,
              "sample": clean}[prediction_type]
    torch.testing.assert_close(noise_from_output(output, noisy, alpha, prediction_type), noise)


def test_warmup_rises_linearly_then_holds():
    assert [warmup_factor(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0


def test_init_fine_tunes_a_copy_of_the_given_dit_and_checks_it_fits(saved_dit, tmp_path):
    base = load_prior(f"dit:{saved_dit}")
    # Latents far from unit variance: a fresh model would rescale them, a fine-tune keeps the scale its init knows.
    pq.write_table(pa.table({"latent": pa.array([[4.0] * 16] * 8, pa.list_(pa.float32(), 16))}),
                   tmp_path / "part.parquet")
    build, null_class, prediction_type, scale = denoiser_builder(
        PriorTrainSettings(init=str(saved_dit)), base.latent_shape, 10, str(tmp_path))
    model = build()
    assert null_class == base.null_class and model.training and prediction_type == "epsilon"  # the init's own
    assert scale == base.latent_scale == 1.0
    assert denoiser_builder(PriorTrainSettings(preset="tiny"), (4, 8, 8), 10, str(tmp_path))[3] == 0.25
    assert all(p.requires_grad for p in model.parameters())
    for trained, original in zip(model.parameters(), base.denoiser.parameters()):
        assert torch.equal(trained, original) and trained.data_ptr() != original.data_ptr()
    with pytest.raises(UserError, match="at least as many classes"):
        denoiser_builder(PriorTrainSettings(init=f"dit:{saved_dit}"), base.latent_shape, base.num_classes + 1,
                         str(tmp_path))
    with pytest.raises(UserError, match="same autoencoder"):
        denoiser_builder(PriorTrainSettings(init=str(saved_dit)), (4, 8, 8), 10, str(tmp_path))


@pytest.mark.parametrize("field, value, message", [
    ("warmup_steps", -1, "--warmup-steps must not be negative, got -1"),
    ("snr_gamma", -5.0, "--snr-gamma must not be negative, got -5.0"),
    ("steps", 0, "--steps must be positive, got 0"),
    ("ema_decay", 1.0, r"--ema-decay must be in \[0, 1\), got 1.0"),
    ("prediction_type", "x0", "--prediction-type must be one of epsilon, v_prediction, sample, got 'x0'"),
])
def test_bad_prior_train_settings_name_the_flag(field, value, message):
    with pytest.raises(UserError, match=message):
        PriorTrainSettings(**{field: value}).check(workers=1)
    PriorTrainSettings().check(workers=1)  # the defaults pass


def test_holdout_split_is_stable_and_about_the_share():
    ids = [f"img-{i}" for i in range(20_000)]
    held = [i for i in ids if is_held_out(i, 0.05)]
    assert 0.04 < len(held) / len(ids) < 0.06
    assert held == [i for i in ids if is_held_out(i, 0.05)]
    assert not any(is_held_out(i, 0.0) for i in ids[:100])


def test_bad_presets_are_named():
    with pytest.raises(UserError, match="unknown DiT preset 'huge'; valid presets: tiny, cifar-cpu"):
        build_dit("huge", (4, 8, 8), 10)
    with pytest.raises(UserError, match="do not divide"):
        build_dit("tiny", (4, 7, 7), 10)


@pytest.fixture(scope="module")
def encoded_digits(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded") / "digits"
    invoke("encode", "--prior", "tiny", "--max-per-class", "20", "--out", str(out))
    return out


def test_killed_prior_training_resumes_and_writes_a_loadable_prior(encoded_digits, tmp_path):
    out = tmp_path / "prior"
    command = [RAYDISTILL, "prior", "train", "--latents", str(encoded_digits / "latents"), "--out", str(out),
               "--preset", "tiny", "--steps", "40", "--checkpoint-every", "10", "--batch-size", "16"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_registered_checkpoint(out, "train_state/prior-*", process)
    kill_process_tree(process.pid)
    process.wait()
    assert not (out / "training.json").exists()
    invoke(*command[1:])  # the rerun on the tests' Ray: one Ray start fewer
    info = json.loads((out / "training.json").read_text())
    assert info["steps"] == 40 and 10 <= info["resumed_from_step"] < 40 and info["num_classes"] == 10

    prior = load_prior(f"dit:{out}")
    assert isinstance(prior, DiffusionPrior) and prior.num_classes == 10 and prior.null_class == 10
    assert prior.prediction_type == "v_prediction" == info["prediction_type"]
    pointer = json.loads((out / "autoencoder.json").read_text())
    assert pointer["prior"] == "tiny" and prior.latent_scale == pointer["latent_scale"]
    assert prior.latent_shape == (4, 16, 16)
    images = torch.rand(2, 3, 32, 32)
    latents = prior.encode(images)
    torch.testing.assert_close(latents, prior.autoencoder.encode(images) * prior.latent_scale)
    assert prior.predict_noise(latents, 500, torch.tensor([0, 9]), 4.0).shape == latents.shape

    if TEACHER.is_file():
        evaluated = invoke("prior", "eval", str(out), "--teacher", f"cifar-resnet56:{TEACHER}",
                           "--samples-per-class", "2", "--steps", "10")
        result = json.loads(evaluated.stdout[evaluated.stdout.index("{"):])
        assert 0 <= result["teacher_top1"] <= 100 and len(result["per_class_top1"]) == 10
        assert result["heldout_latents"] > 0 and np.isfinite(result["heldout_loss"])


def test_latents_of_an_unfinished_run_are_refused(tmp_path):
    (tmp_path / "latents").mkdir()
    result = subprocess.run([RAYDISTILL, "prior", "train", "--latents", str(tmp_path / "latents"), "--out",
                             str(tmp_path / "p")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not a finished encode stage" in result.stderr
