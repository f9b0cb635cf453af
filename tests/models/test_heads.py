"""SegFormer's All-MLP head: the fused computation equals the published one, written out here."""

import pytest
import torch
import torch.nn.functional as F

from transkd.models.heads import SegFormerHead

CHANNELS = (8, 16, 24, 32)


def published_head(head: SegFormerHead, features: list[torch.Tensor]) -> torch.Tensor:
    """Project each stage (token-wise linear), upsample to stage 1, concatenate stage 4 first,
    1×1 conv, BatchNorm, ReLU, classifier: SegFormer's decoder as its authors wrote it."""
    size = features[0].shape[2:]
    maps = []
    for proj, f in zip(head.linear_c, features):
        tokens = f.flatten(2).transpose(1, 2) @ proj.proj.weight.T + proj.proj.bias
        grid = tokens.transpose(1, 2).reshape(f.shape[0], -1, *f.shape[2:])
        maps.append(F.interpolate(grid, size=size, mode="bilinear", align_corners=False))
    fused = F.conv2d(torch.cat(maps[::-1], dim=1), head.fuse.conv.weight)
    bn = head.fuse.bn
    fused = F.batch_norm(fused, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias,
                         training=bn.training, eps=bn.eps)
    return F.conv2d(F.relu(fused), head.classifier.weight, head.classifier.bias)


def _head_and_features(dtype=torch.float64):
    torch.manual_seed(0)
    head = SegFormerHead(CHANNELS, num_classes=5, embed_dim=16).to(dtype)
    with torch.no_grad():  # running statistics and an affine transform far from the identity
        head.fuse.bn.running_mean.normal_()
        head.fuse.bn.running_var.uniform_(0.3, 3.0)
        head.fuse.bn.weight.normal_()
        head.fuse.bn.bias.normal_()
    features = [torch.randn(2, c, 16 // 2 ** i, 24 // 2 ** i, dtype=dtype) for i, c in enumerate(CHANNELS)]
    return head, features


@pytest.mark.parametrize("training", [False, True])
def test_fused_head_equals_the_published_computation(training):
    head, features = _head_and_features()
    head.train(training)
    head.dropout.p = 0.0
    expected = published_head(head, features)
    with torch.no_grad():
        assert torch.allclose(head(features), expected, atol=1e-10)
        head.fused_projection = False
        assert torch.allclose(head(features), expected, atol=1e-10)


def test_inference_folds_batchnorm_without_touching_its_statistics():
    head, features = _head_and_features(torch.float32)
    head.eval()
    saved = {k: v.clone() for k, v in head.state_dict().items()}
    with torch.no_grad():
        folded = head(features)
        head.fused_projection = False
        literal = head(features)
    assert torch.allclose(folded, literal, atol=1e-5)
    assert all(torch.equal(saved[k], v) for k, v in head.state_dict().items())


def test_fused_head_trains_like_the_published_one():
    head, features = _head_and_features()
    head.train()
    head.dropout.p = 0.0
    published_head(head, features).square().sum().backward()
    expected = {n: p.grad.clone() for n, p in head.named_parameters()}
    head.zero_grad()
    head(features).square().sum().backward()
    for name, param in head.named_parameters():
        assert torch.allclose(param.grad, expected[name], atol=1e-8), name
