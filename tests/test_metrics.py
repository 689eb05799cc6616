"""The digit FID and the confident share (book §2.3, the speed/quality table), and the zoo's digits checkpoints.

File under test: diffcourse/metrics.py (and zoo/digits_unet.safetensors, zoo/digit_classifier.safetensors).
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from diffcourse import metrics, zoo
from diffcourse.data import load_digits


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def classifier():
    return metrics.load_digit_classifier("cpu")


@pytest.fixture(scope="module")
def reference(classifier):
    return metrics.reference_stats(classifier)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    cov = A @ A.T + np.eye(4)
    mu = rng.normal(size=4)
    assert abs(metrics.frechet_distance(mu, cov, mu, cov)) < 1e-6, "FD of a Gaussian with itself must be 0"
    shift = metrics.frechet_distance(mu, cov, mu + 2.0, cov)
    assert abs(shift - 16.0) < 1e-6, f"shifting all 4 means by 2 should give ||d||^2 = 16, got {shift}"
    # isotropic: FD(N(0, a I), N(0, b I)) = D (sqrt a - sqrt b)^2
    fd = metrics.frechet_distance(np.zeros(3), 4 * np.eye(3), np.zeros(3), np.eye(3))
    assert abs(fd - 3.0) < 1e-6, f"FD(N(0,4I), N(0,I)) in 3-D should be 3 (sqrt4 - sqrt1)^2 = 3, got {fd}"
    # against a direct evaluation with scipy for non-commuting covariances
    B = rng.normal(size=(4, 4))
    cov2 = B @ B.T + 0.5 * np.eye(4)
    direct = float(mu @ mu * 0 + np.trace(cov + cov2 - 2 * scipy.linalg.sqrtm(cov @ cov2).real))
    assert abs(metrics.frechet_distance(mu, cov, mu, cov2) - direct) < 1e-6


def test_gaussian_stats_validates_and_matches_numpy():
    f = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    mu, cov = metrics.gaussian_stats(f)
    np.testing.assert_allclose(mu, f.double().mean(0).numpy(), rtol=1e-10)
    np.testing.assert_allclose(cov, np.cov(f.double().numpy(), rowvar=False), rtol=1e-10)
    with pytest.raises(ValueError, match="N >= 2"):
        metrics.gaussian_stats(torch.randn(1, 3))


def test_classifier_is_verified_and_accurate(classifier):
    e = zoo.entry("digit_classifier")
    assert e["cv_accuracy"] > 0.9, f"the manifest's cross-validated accuracy should exceed 90%, got {e['cv_accuracy']}"
    x, y = load_digits("train")                                  # never seen by the classifier
    with torch.no_grad():
        acc = float((classifier(x).argmax(-1) == y).float().mean())
    assert acc > 0.95, f"the zoo classifier should classify > 95% of the (unseen) train split; got {acc:.3f}"
    assert abs(acc - e["train_split_accuracy"]) < 1e-3, "the manifest's train_split_accuracy disagrees with the file"


def test_digit_fid_orders_real_blurred_and_noise(classifier, reference):
    floor = metrics.real_floor(200, classifier, reference)
    x, _ = load_digits("train")
    blurred = torch.nn.functional.avg_pool2d(x[:200], 3, 1, 1)
    noise = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fid_blur = metrics.digit_fid(blurred, classifier, reference)
    fid_noise = metrics.digit_fid(noise, classifier, reference)
    assert floor < 2.0 < 5 * floor < fid_blur < fid_noise, (
        f"expected real floor < blurred digits < noise; got floor {floor:.2f}, blurred {fid_blur:.2f}, noise {fid_noise:.2f}")
    assert metrics.confident_share(x[:200], classifier) > 0.9, "real digits should be classified confidently"
    assert metrics.digit_fid(x[:200], classifier) == pytest.approx(metrics.digit_fid(x[:200], classifier, reference))


def test_real_floor_validates(classifier, reference):
    with pytest.raises(ValueError, match="n must be"):
        metrics.real_floor(5000, classifier, reference)


@pytest.mark.slow
def test_zoo_digits_unet_beats_a_poorly_trained_model(classifier, reference):
    """The zoo U-Net's 20-step DDIM samples score far better than those of a 100-step model (book §2.3)."""
    from diffcourse.models import UNet, UNetConfig
    from diffcourse.samplers import sample_ddim
    from diffcourse.training import TrainConfig, train

    digits = zoo.load("digits_unet", device="cpu")
    x_T = torch.randn(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        good = sample_ddim(digits.model, x_T, digits.schedule, num_steps=20)
    torch.manual_seed(0)
    poor_run = train(UNet(UNetConfig.digits()), load_digits("train")[0], digits.schedule,
                     TrainConfig(steps=100, batch_size=128, lr=2e-3, warmup_steps=20, progress=False, device="cpu"))
    with torch.no_grad():
        poor = sample_ddim(poor_run.ema_model(), x_T, digits.schedule, num_steps=20)
    fid_good = metrics.digit_fid(good, classifier, reference)
    fid_poor = metrics.digit_fid(poor, classifier, reference)
    floor = metrics.real_floor(200, classifier, reference)
    assert fid_good < 0.5 * fid_poor and fid_good < 10 * floor, (
        f"zoo digits U-Net: FID {fid_good:.2f}; 100-step model: {fid_poor:.2f}; real floor {floor:.2f}. "
        f"Expected the zoo model below half the poor one and within 10x the floor; retrain with the manifest command?")
