import math

import pytest
import torch
from torch import nn

from transkd.engine.evaluate import ConfusionMatrix, evaluate
from transkd.inference import InferenceOptions, predict_logits, window_starts
from transkd.models import create_model


def _hand_example():
    target = torch.tensor([[0, 0, 0, 1], [1, 255, 1, 0]])
    pred = torch.tensor([[0, 0, 1, 1], [2, 3, 1, 2]])
    return pred, target


def test_confusion_matrix_by_hand():
    cm = ConfusionMatrix(4, ignore_index=255)
    pred, target = _hand_example()
    cm.update(pred, target)
    assert cm.mat.dtype == torch.int64
    assert cm.mat.tolist() == [[2, 1, 1, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    m = cm.metrics()
    assert m["iou"][:3] == pytest.approx([0.5, 0.5, 0.0])
    assert math.isnan(m["iou"][3])  # absent from prediction (pixel ignored) and ground truth
    assert m["miou"] == pytest.approx(1 / 3)
    assert m["acc"] == pytest.approx(4 / 7)
    assert m["class_acc"][:2] == pytest.approx([0.5, 2 / 3]) and math.isnan(m["class_acc"][2])
    assert m["macc"] == pytest.approx(7 / 12)


def test_confusion_matrix_ignores_void_class_and_accumulates():
    cm = ConfusionMatrix(4)
    pred, target = _hand_example()
    cm.update(pred.reshape(2, 1, 4), target.reshape(2, 1, 4))
    cm.update(torch.tensor([[1, 2]]), torch.tensor([[4, 4]]))  # extra void class K = 4: skipped
    assert cm.mat.sum() == 7
    cm.update(pred, target)
    assert cm.mat.sum() == 14 and cm.metrics()["miou"] == pytest.approx(1 / 3)
    cm.reset()
    assert cm.mat.sum() == 0 and math.isnan(cm.metrics()["miou"]) and math.isnan(cm.metrics()["acc"])


def test_confusion_matrix_rejects_bad_input():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cm.update(torch.tensor([0, 3]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_confusion_matrix_all_reduce_single_process(tmp_path):
    cm = ConfusionMatrix(4)
    cm.update(*_hand_example())
    before = cm.mat.clone()
    assert cm.all_reduce() is cm and torch.equal(cm.mat, before)  # not initialised: no-op
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                                         world_size=1)
    try:
        cm.all_reduce()
    finally:
        torch.distributed.destroy_process_group()
    assert torch.equal(cm.mat, before)


class _PointwiseModel(nn.Module):
    """A 1×1 convolution: translation-equivariant, output at the input resolution."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return self.conv(x)


def test_window_starts_cover_the_image():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 3) == [0]


@pytest.mark.parametrize("size, crop, stride", [((23, 37), (8, 10), (5, 7)), ((5, 6), (8, 8), (4, 4)),
                                                ((16, 16), (8, 8), (8, 8))])
def test_slide_equals_whole_for_translation_equivariant_model(size, crop, stride):
    model = _PointwiseModel().eval()
    images = torch.randn(2, 3, *size)
    with torch.inference_mode():
        whole = predict_logits(model, images)
        slide = predict_logits(model, images, mode="slide", crop=crop, stride=stride)
    assert slide.shape == whole.shape == (2, 5, *size)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


def test_flip_average_of_pointwise_model_is_its_softmax():
    model = _PointwiseModel().eval()
    images = torch.randn(1, 3, 9, 11)
    with torch.inference_mode():
        tta = predict_logits(model, images, flip=True)
        expected = model(images).log_softmax(dim=1)
    torch.testing.assert_close(tta, expected, atol=1e-5, rtol=1e-5)


def test_segformer_shapes_whole_slide_and_multiscale_flip():
    model = create_model("segformer_b0", num_classes=3).eval()
    images = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        whole = predict_logits(model, images)
        slide = predict_logits(model, images, mode="slide", crop=(64, 64), stride=(32, 32))
        quarter = predict_logits(model, images, out_size=(16, 24))
        tta = predict_logits(model, images, scales=(0.5, 1.5), flip=True, out_size=(16, 24))
        tta_slide = predict_logits(model, images, mode="slide", crop=(48, 64), scales=(0.75, 1.0))
    assert whole.shape == slide.shape == (1, 3, 64, 96)
    assert quarter.shape == tta.shape == (1, 3, 16, 24)
    assert tta_slide.shape == (1, 3, 64, 96)
    for out in (tta, tta_slide):  # log of averaged probabilities
        torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(1, *out.shape[-2:]))
    assert torch.isfinite(slide).all()


def test_inference_options_validation():
    with pytest.raises(ValueError, match="'mode'"):
        InferenceOptions(mode="tiles").validate()
    with pytest.raises(ValueError, match="'crop'"):
        InferenceOptions(mode="slide").validate()
    with pytest.raises(ValueError, match="'scales'"):
        InferenceOptions(scales=(1.0, 0.0)).validate()
    with pytest.raises(ValueError, match="'stride'"):
        InferenceOptions(stride=(0, 4)).validate()
    opts = InferenceOptions(mode="slide", crop=[30, 60], scales=[1.0, 2.0]).validate()
    assert opts.crop == (30, 60) and opts.window_stride() == (20, 40) and opts.scales == (1.0, 2.0)
    assert InferenceOptions(mode="slide", crop=12).validate().crop == (12, 12)


class _OracleModel(nn.Module):
    """Logits = one-hot of the class id stored in channel 0, at 1/4 resolution, plus a void logit."""

    def __init__(self, num_classes, void_logit=False):
        super().__init__()
        self.num_classes = num_classes
        self.void_logit = void_logit
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        ids = x[:, 0, ::4, ::4].round().long()
        logits = nn.functional.one_hot(ids, self.num_classes).permute(0, 3, 1, 2).float() * 10
        if self.void_logit:
            logits = torch.cat([logits, torch.full_like(logits[:, :1], 100.0)], dim=1)
        return logits + self.dummy


def _loader(num_classes, void_label, batches=2):
    torch.manual_seed(1)
    out = []
    for _ in range(batches):
        blocks = torch.randint(0, num_classes, (2, 4, 6))
        image = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2).float()
        image = image[:, None].expand(2, 3, 64, 96).contiguous()
        label = blocks.repeat_interleave(4, 1).repeat_interleave(4, 2).clone()  # 1/4 resolution
        label[:, 0, :5] = void_label
        out.append({"image": image, "label": label})
    return out


def test_evaluate_perfect_model_and_restores_mode():
    model = _OracleModel(3).train()
    m = evaluate(model, _loader(3, 255), num_classes=3, ignore_index=255, progress=True)
    assert m["miou"] == pytest.approx(1.0) and m["acc"] == pytest.approx(1.0)
    assert m["confusion"].shape == (3, 3) and m["confusion"].device.type == "cpu"
    assert m["confusion"].sum() == 2 * 2 * (16 * 24 - 5)
    assert model.training


def test_evaluate_void_as_extra_class():
    model = _OracleModel(3, void_logit=True)
    m = evaluate(model, _loader(3, 3), num_classes=3, ignore_index=255)
    assert m["miou"] == pytest.approx(1.0)  # void logit excluded from argmax, void pixels skipped
    assert m["confusion"].sum() == 2 * 2 * (16 * 24 - 5)


def test_evaluate_slide_tta_and_amp(device):
    model = _OracleModel(3).to(device)
    inference = InferenceOptions(mode="slide", crop=(32, 48), stride=(32, 48), flip=True)
    m = evaluate(model, _loader(3, 255, batches=1), num_classes=3, ignore_index=255, inference=inference,
                 amp_dtype=torch.bfloat16, device=device)
    assert m["miou"] == pytest.approx(1.0)
    assert m["confusion"].device.type == "cpu" and m["confusion"].sum() == 2 * (16 * 24 - 5)


def test_evaluate_rejects_too_few_outputs():
    with pytest.raises(ValueError, match="outputs"):
        evaluate(_OracleModel(2), _loader(2, 255, batches=1), num_classes=3, ignore_index=255)


def _authors_iou(pred: torch.Tensor, target: torch.Tensor, num_outputs: int) -> list[float]:
    """Per-class IoU as the reference code's iouEval counts it, written from its logic: one-hot
    predictions and targets over all outputs, the void channel (the last) dropped from both, void
    targets removed from false positives only. Classes never seen are left out (NaN) here."""
    x = torch.nn.functional.one_hot(pred, num_outputs).double()[..., :-1]
    y = torch.nn.functional.one_hot(target, num_outputs).double()
    ignores, y = y[..., -1:], y[..., :-1]
    tp = (x * y).sum(dim=(0, 1))
    fp = (x * (1 - y - ignores)).sum(dim=(0, 1))
    fn = ((1 - x) * y).sum(dim=(0, 1))
    den = tp + fp + fn
    return [float(t / d) if d > 0 else math.nan for t, d in zip(tp, den, strict=True)]


def test_void_prediction_false_negative_matches_the_authors_iou():
    torch.manual_seed(3)
    k = 4
    target = torch.randint(0, k + 1, (2, 9, 7))  # k = void
    logits = torch.randn(2, k + 1, 9, 7)
    logits[:, k] += 0.8  # void predicted often
    pred_all = logits.argmax(1)
    loader = [{"image": logits, "label": target}]

    class _Identity(nn.Module):
        def forward(self, x):
            return x

    m = evaluate(_Identity(), loader, num_classes=k, ignore_index=255, void_false_negative=True)
    assert m["confusion"].shape == (k, k + 1) and int(m["confusion"][:, k].sum()) > 0
    expected = _authors_iou(pred_all.reshape(-1, 1)[:, 0][None], target.reshape(1, -1), k + 1)
    assert m["iou"] == pytest.approx(expected)
    default = evaluate(_Identity(), loader, num_classes=k, ignore_index=255)
    assert default["miou"] != pytest.approx(m["miou"])  # the option changes the number


def test_void_prediction_false_negative_needs_the_void_output():
    with pytest.raises(ValueError, match="void output"):
        evaluate(_OracleModel(3), _loader(3, 255, batches=1), num_classes=3, ignore_index=255,
                 void_false_negative=True)


def test_per_image_confusion_with_void_column_sums_to_the_dataset_matrix():
    torch.manual_seed(4)
    logits = torch.randn(3, 4, 5, 5)
    target = torch.randint(0, 4, (3, 5, 5))

    class _Identity(nn.Module):
        def forward(self, x):
            return x

    m = evaluate(_Identity(), [{"image": logits, "label": target}], num_classes=3, per_image=True,
                 void_false_negative=True)
    assert m["per_image_confusion"].shape == (3, 3, 4)
    assert torch.equal(m["per_image_confusion"].sum(0), m["confusion"])
