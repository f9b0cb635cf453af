from dataclasses import dataclass

import numpy as np
import pytest
import torch

from transkd.data.protocols import (
    ERFNET_CITYSCAPES_WEIGHTS,
    Protocol,
    ProtocolOptions,
    TransformedDataset,
    build_transform,
    class_weights,
    list_protocols,
    median_frequency_weights,
    register_protocol,
)
from transkd.errors import ConfigError


@dataclass
class _Sample:
    image: np.ndarray
    label: np.ndarray
    name: str


class _TinyDataset(torch.utils.data.Dataset):
    def __init__(self, n=3, size=(64, 128), num_classes=4):
        rng = np.random.default_rng(0)
        self.samples = [
            _Sample(rng.integers(0, 256, (*size, 3), dtype=np.uint8),
                    rng.integers(0, num_classes, size, dtype=np.uint8), f"img{i}")
            for i in range(n)
        ]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _image_label(h=64, w=128, seed=0):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, (h, w), dtype=np.uint8)
    label[:4, :4] = 255
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8), label


def test_defaults_are_valid_and_fixed():
    opts = ProtocolOptions().validate()
    assert opts.name == "paper" and opts.normalize and opts.shift_label_scaled
    assert not opts.void_as_extra_class and opts.poly_horizon_epochs is None
    assert opts.num_outputs(19) == 19
    faithful = ProtocolOptions.faithful().validate()
    assert not faithful.normalize and not faithful.shift_label_scaled
    assert faithful.void_as_extra_class and faithful.poly_horizon_epochs == 1500
    assert faithful.num_outputs(19) == 20
    assert faithful.input_normalization() == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("field, value", [
    ("name", "mmseg"), ("short_side", 0), ("label_scale", 0.0), ("max_shift", -1), ("flip_prob", 1.5),
    ("normalize", "yes"), ("class_weights", "inverse"), ("crop_size", (512,)), ("ratio_range", (2.0, 0.5)),
    ("cat_max_ratio", 0.0), ("poly_horizon_epochs", 0), ("ignore_index", 300), ("std", (1.0, 0.0, 1.0)),
    ("image_size", (0, 4)), ("scale", (1024, -1)),
])
def test_validate_names_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        ProtocolOptions(**{field: value}).validate()


def test_lists_from_yaml_become_tuples():
    opts = ProtocolOptions(name="standard", crop_size=[32, 48], ratio_range=[0.5, 2.0]).validate()
    assert opts.crop_size == (32, 48) and opts.ratio_range == (0.5, 2.0)


def test_paper_shapes_train_and_eval():
    image, label = _image_label(64, 128)
    opts = ProtocolOptions(short_side=64)
    for train in (True, False):
        out_image, out_label = build_transform(opts, train=train)(image, label, np.random.default_rng(0))
        assert out_image.shape == (3, 64, 128) and out_image.dtype == torch.float32
        assert out_label.shape == (16, 32) and out_label.dtype == torch.int64


def test_paper_resizes_short_side():
    image, label = _image_label(40, 60)
    out_image, out_label = build_transform(ProtocolOptions(short_side=32), train=False)(
        image, label, np.random.default_rng(0))
    assert out_image.shape == (3, 32, 48) and out_label.shape == (8, 12)
    fixed = build_transform(ProtocolOptions(image_size=(16, 24)), train=False)
    assert fixed(image, label, np.random.default_rng(0))[1].shape == (4, 6)


def test_paper_normalisation_switch():
    image = np.full((8, 8, 3), 255, np.uint8)
    label = np.zeros((8, 8), np.uint8)
    plain = build_transform(ProtocolOptions(short_side=8, normalize=False), train=False)
    assert torch.allclose(plain(image, label, None)[0], torch.ones(3, 8, 8))
    normed = build_transform(ProtocolOptions(short_side=8), train=False)(image, label, None)[0]
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(normed[:, 0, 0], expected, atol=1e-5)


def test_paper_eval_is_deterministic():
    image, label = _image_label()
    tf = build_transform(ProtocolOptions(short_side=64), train=False)
    a = tf(image, label, np.random.default_rng(0))
    b = tf(image, label, np.random.default_rng(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _shift_border_values(opts, seeds=range(40)):
    """Label values found on the border rows/cols over many random shifts (image all one class)."""
    image = np.full((64, 64, 3), 128, np.uint8)
    label = np.full((64, 64), 3, np.uint8)
    tf = build_transform(opts, train=True)
    values = set()
    for seed in seeds:
        values |= set(tf(image, label, np.random.default_rng(seed))[1].unique().tolist())
    return values


def test_paper_shift_fix_versus_faithful_defect():
    fixed = ProtocolOptions(short_side=64, max_shift=8)
    assert _shift_border_values(fixed) == {3, 255}
    faithful = ProtocolOptions.faithful(short_side=64, max_shift=8, void_as_extra_class=False,
                                        void_prediction_false_negative=False)
    assert _shift_border_values(faithful) == {0, 3, 255}  # void padding, class 0 past the edge


def test_paper_fixed_label_shift_stays_aligned_with_image():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255  # right half bright
    label = np.zeros((64, 64), np.uint8)
    label[:, 32:] = 1
    tf = build_transform(ProtocolOptions(short_side=64, max_shift=8, flip_prob=0.0, normalize=False), True)
    for seed in range(30):
        out_image, out_label = tf(image, label, np.random.default_rng(seed))
        edge_image = int((out_image[0, 32] > 0.5).nonzero()[0])  # first bright column, full res
        edge_label = int((out_label[8] == 1).nonzero()[0])  # first class-1 column, 1/4 res
        assert abs(edge_image / 4 - edge_label) <= 0.5


def test_void_as_extra_class_maps_ignore():
    image, label = _image_label()
    opts = ProtocolOptions(short_side=64, void_as_extra_class=True)
    with pytest.raises(ConfigError, match="num_classes"):
        build_transform(opts, train=False)
    out_label = build_transform(opts, train=False, num_classes=4)(image, label, None)[1]
    assert out_label[0, 0] == 4 and out_label.max() == 4 and not (out_label == 255).any()


def test_standard_train_shapes_and_values():
    image, label = _image_label(48, 64)
    opts = ProtocolOptions(name="standard", crop_size=(32, 40))
    tf = build_transform(opts, train=True)
    for seed in range(10):
        out_image, out_label = tf(image, label, np.random.default_rng(seed))
        assert out_image.shape == (3, 32, 40) and out_label.shape == (32, 40)
        assert set(out_label.unique().tolist()) <= {0, 1, 2, 3, 255}


def test_standard_pads_small_crops_with_ignore():
    image, label = _image_label(16, 16)
    label[:] = 1
    opts = ProtocolOptions(name="standard", crop_size=(64, 64), ratio_range=(1.0, 1.0), flip_prob=0.0,
                           photometric=False)
    out_image, out_label = build_transform(opts, train=True)(image, label, np.random.default_rng(0))
    assert out_label.shape == (64, 64)
    assert (out_label[:16, :16] == 1).all() and (out_label[16:] == 255).all()
    assert (out_image[:, 16:] == 0).all()  # padded after normalisation: the mean colour


def test_standard_eval_keeps_full_label():
    image, label = _image_label(20, 40)
    opts = ProtocolOptions(name="standard", scale=(80, 40))
    out_image, out_label = build_transform(opts, train=False)(image, label, None)
    assert out_image.shape == (3, 40, 80) and out_label.shape == (20, 40)
    assert torch.equal(out_label, torch.from_numpy(label).long())
    no_resize = build_transform(ProtocolOptions(name="standard"), train=False)(image, label, None)
    assert no_resize[0].shape == (3, 20, 40)


def test_class_weights_modes():
    erfnet = class_weights("cityscapes", 19, ProtocolOptions())
    assert erfnet.dtype == torch.float32 and erfnet.shape == (19,)
    assert erfnet[0].item() == pytest.approx(2.5959737)
    faithful = class_weights("acdc", 19, ProtocolOptions.faithful())
    assert faithful.shape == (20,) and faithful[-1] == 0
    assert torch.allclose(faithful[:19], torch.tensor(ERFNET_CITYSCAPES_WEIGHTS))
    assert class_weights("camvid", 11, ProtocolOptions()) is None
    assert class_weights("cityscapes", 19, ProtocolOptions(name="standard")) is None
    void_only = class_weights("camvid", 11, ProtocolOptions(void_as_extra_class=True))
    assert void_only.tolist() == [1.0] * 11 + [0.0]
    with pytest.raises(ConfigError, match="erfnet"):
        class_weights("camvid", 11, ProtocolOptions(class_weights="erfnet"))
    with pytest.raises(ConfigError, match="median_freq"):
        class_weights("camvid", 11, ProtocolOptions(class_weights="median_freq"))


def test_median_frequency_weights_by_hand():
    a = np.array([[0, 0, 0, 1]], np.uint8)  # class 0: 3/4, class 1: 1/4
    b = np.array([[0, 2, 255, 255]], np.uint8)  # 2 labelled pixels: class 0: 1, class 2: 1
    weights = median_frequency_weights([a, b], num_classes=4)
    freq = np.array([4 / 6, 1 / 4, 1 / 2])
    expected = np.median(freq) / freq
    np.testing.assert_allclose(weights[:3].numpy(), expected, rtol=1e-6)
    assert weights[3] == 1.0  # never seen
    ds = _TinyDataset(n=2, size=(4, 4))
    via_opts = class_weights("folder", 4, ProtocolOptions(class_weights="median_freq"), dataset=ds)
    assert via_opts.shape == (4,) and (via_opts > 0).all()


def test_transformed_dataset_determinism():
    ds = TransformedDataset(_TinyDataset(), build_transform(ProtocolOptions(short_side=64, max_shift=8),
                                                             train=True), seed=7)
    item = ds[1]
    assert set(item) == {"image", "label", "name", "index", "skipped"}
    assert item["name"] == "img1" and item["index"] == 1 and item["skipped"] == ""
    assert item["image"].shape == (3, 64, 128) and item["label"].shape == (16, 32)
    again = ds[1]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["label"], again["label"])
    fresh = TransformedDataset(_TinyDataset(), build_transform(ProtocolOptions(short_side=64, max_shift=8),
                                                                train=True), seed=7)
    assert torch.equal(fresh[1]["image"], item["image"])
    differs = 0
    for epoch in range(1, 6):
        ds.set_epoch(epoch)
        differs += not torch.equal(ds[1]["image"], item["image"])
    assert differs >= 4
    ds.set_epoch(0)
    assert torch.equal(ds[1]["image"], item["image"])
    assert ds[-1]["index"] == 2
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ConfigError, match="seed"):
        TransformedDataset(_TinyDataset(), None, seed=-1)


def test_transformed_dataset_in_dataloader_with_workers_matches():
    tf = build_transform(ProtocolOptions(short_side=32), train=True)
    ds = TransformedDataset(_TinyDataset(n=4), tf, seed=1)
    ds.set_epoch(2)
    single = [ds[i]["image"] for i in range(4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batched = torch.cat([b["image"] for b in loader])
    assert torch.equal(batched, torch.stack(single))


def test_each_protocol_owns_its_resize_words_and_outputs():
    paper = ProtocolOptions(image_size=(64, 128), void_as_extra_class=True).protocol()
    assert paper.eval_resize() == {"size": [64, 128]} and paper.fixed_input_size() == (64, 128)
    assert paper.words() == {"protocol": "paper", "input_size": "64x128 (HxW)",
                             "metric_resolution": "0.25 of the input resolution"}
    assert paper.num_outputs(19) == 20 and paper.default_class_weights("cityscapes", 19) == "erfnet"
    standard = ProtocolOptions(name="standard", scale=(80, 40)).protocol()
    assert standard.eval_resize() == {"scale": [80, 40]} and standard.fixed_input_size() is None
    assert standard.words()["input_size"] == "keep-ratio resize to 80x40 (long x short)"
    assert standard.default_class_weights("cityscapes", 19) == "none"
    assert list_protocols() == ["paper", "standard"]


def test_a_new_protocol_is_one_class(monkeypatch):
    from transkd.config import load_config
    from transkd.data.protocols import base

    monkeypatch.setattr(base, "_PROTOCOLS", dict(base._PROTOCOLS))

    @register_protocol
    class WholeImage(Protocol):
        name = "whole"
        description = "no resize, no augmentation"

        def train_steps(self) -> list:
            return [self.normalize()]

        eval_steps = train_steps

        def eval_resize(self):
            return None

        def input_size_words(self) -> str:
            return "original size"

        def metric_resolution_words(self) -> str:
            return "full label resolution"

    config = load_config(None, ["protocol.name=whole"])
    assert isinstance(config.protocol.protocol(), WholeImage)
    image, label = _image_label(32, 48)
    transform = build_transform(config.protocol, train=True)
    out_image, out_label = transform(image, label, np.random.default_rng(0))
    assert out_image.shape == (3, 32, 48) and out_label.shape == (32, 48)
