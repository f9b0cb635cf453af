"""Normalisation left to the device: uint8 batches, normalised there, equal today's float batches
bit for bit, padding included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transkd.data.protocols import ProtocolOptions, build_transform
from transkd.data.transforms import MarkValid, Normalize, PadTo, ToTensor

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PIPELINES = {
    "paper": ProtocolOptions(name="paper", image_size=(32, 64)),
    # random scale 0.5-2.0 of a 64x32 target and a 64x64 crop: small draws are padded
    "standard": ProtocolOptions(name="standard", crop_size=(64, 64), scale=(128, 64)),
}


def samples(count: int = 12):
    rng = np.random.default_rng(7)
    for _ in range(count):
        yield (rng.integers(0, 256, (64, 128, 3), dtype=np.uint8),
               rng.integers(0, 10, (64, 128), dtype=np.uint8))


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_device_normalised_batch_is_bit_identical(name, device):
    opts = PIPELINES[name]
    today = build_transform(opts, train=True)
    deferred = build_transform(opts, train=True, normalize_on_device=True)
    assert today.deferred is None and isinstance(deferred.deferred, Normalize)
    want, got, padded = [], [], 0
    for index, (image, label) in enumerate(samples()):
        x, y = today(image, label, np.random.default_rng(index))
        u, v = deferred(image, label, np.random.default_rng(index))
        assert u.dtype == torch.uint8 and torch.equal(y, v)
        padded += int(u.shape[0] == 4 and bool((u[3] == 0).any()))
        want.append(x)
        got.append(u)
    batch = deferred.deferred.batch(torch.stack(got).to(device)).cpu()
    expected = torch.stack(want)
    assert batch.dtype == torch.float32 and batch.shape == expected.shape
    assert batch.numpy().tobytes() == expected.numpy().tobytes()  # bits, signed zeros included
    if name == "standard":
        assert padded > 0, "the case should exercise padding"


def test_batch_follows_the_formula(device):
    images = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    got = Normalize(MEAN, STD).batch(images.to(device)).cpu().double()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1).double(), torch.tensor(STD).view(1, 3, 1, 1).double()
    torch.testing.assert_close(got, (images.double() / 255 - mean) / std, rtol=0, atol=1e-5)


def test_padding_reads_zero_after_normalisation():
    image = np.full((2, 3, 3), 200, dtype=np.uint8)
    steps = [MarkValid(), PadTo((4, 5)), ToTensor(keep_uint8=True)]
    label = np.zeros((2, 3), dtype=np.uint8)
    for step in steps:
        image, label = step(image, label)
    out = Normalize(MEAN, STD).batch(image[None])[0]
    assert (out[:, 2:, :] == 0).all() and (out[:, :, 3:] == 0).all()
    assert not torch.signbit(out[:, 2:, :]).any()
    assert (out[:, :2, :3] != 0).all()


def test_batch_refuses_float_input():
    with pytest.raises(ValueError, match="uint8"):
        Normalize().batch(torch.zeros(1, 3, 2, 2))
