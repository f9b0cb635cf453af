"""Training-time sizes of the TransKD methods match the paper (SegFormer-B2 → B0, 20 outputs,
1×3×512×1024, the paper's MAC convention of ``transkd.profile``).

Parameters: the paper's counts include a BatchNorm-free duplicate of CSF's squeeze convolution
(3 × 2,048 = 6,144 parameters) that the authors' code only runs for single-sample batches; this
implementation has no duplicate, so it is 6,144 below the paper, inside the table's rounding.
"""

from __future__ import annotations

import pytest
import torch

from transkd import create_distiller, create_model
from transkd.profile import profile_distiller

PAPER = {  # method: (params M, GMACs) — student + training-only modules
    "transkd_base": (4.56, 16.47),
    "transkd_gl": (5.22, 16.80),
    "transkd_ea": (5.53, 17.84),
}
AUTHORS_SINGLE_SAMPLE_BRANCH = 3 * 64 * 32
ADAPTERS = {"transkd_base": 837_696, "transkd_gl": 1_493_826, "transkd_ea": 1_808_648}


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    return create_model("segformer_b2", num_classes=20), create_model("segformer_b0", num_classes=20)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(PAPER))
def test_training_sizes_match_the_paper(pair, method):
    teacher, student = pair
    sizes = profile_distiller(create_distiller(method, teacher, student), (512, 1024))
    params_m, gmacs = PAPER[method]
    assert sizes["params_adapters"] == ADAPTERS[method]
    assert sizes["params_training"] / 1e6 == pytest.approx(params_m, abs=0.01)
    assert (sizes["params_training"] + AUTHORS_SINGLE_SAMPLE_BRANCH) / 1e6 == pytest.approx(
        params_m, abs=0.005)
    assert sizes["macs_conv_linear_training"] / 1e9 == pytest.approx(gmacs, abs=0.05)
    # The deployed student is untouched: 3.72 M / 13.67 G whatever the method.
    student_macs = sizes["macs_conv_linear_training"] - sizes["macs_conv_linear_adapters"]
    assert (sizes["params_training"] - sizes["params_adapters"]) / 1e6 == pytest.approx(3.72, abs=0.005)
    assert student_macs / 1e9 == pytest.approx(13.67, abs=0.005)
