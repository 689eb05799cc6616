"""Shared by the chapter 7 digits tests (test_flow_distill.py, test_flow_dit_ddpm.py): 20 samples of each class,
the noise they start from, and the judge (class agreement, digit FID) of diffcourse.metrics (book §2.7).
Import the fixtures into a test module to use them."""
from __future__ import annotations

import pytest
import torch

from diffcourse import metrics

PER = 20
LABELS = torch.arange(10).repeat_interleave(PER)                                     # (200,)


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    clf = metrics.load_digit_classifier("cpu")
    ref = metrics.reference_stats(clf)
    return lambda x: (metrics.class_agreement(x, LABELS, clf).mean().item(), metrics.digit_fid(x, clf, ref))


@pytest.fixture(scope="module")
def noise():
    return torch.randn(len(LABELS), 1, 8, 8, generator=torch.Generator().manual_seed(3))
