"""The distillation losses written again from their papers' formulas, in plain numpy (or plain
torch functional calls on an adapter's own weights), sharing no code with ``transkd.distill``.

The tests compare the library's terms with these; a change to either formula fails them.
Everything here runs in float64.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a - b) ** 2).mean())


# ---------------------------------------------------------------- logits

def kd(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
    """Hinton: T² · mean over pixels of Σ_c p_t (log p_t − log p_s), p = softmax(z / T) over classes."""
    p_s, p_t = softmax(student / temperature, 1), softmax(teacher / temperature, 1)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(axis=1)
    return temperature ** 2 * float(kl.mean())


def cwd(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """Shu et al.: τ²/(N·C) · Σ_{n,c} KL(softmax_HW(t_nc/τ) ‖ softmax_HW(s_nc/τ))."""
    n, c = student.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            p_s = softmax(student[i, j].reshape(-1) / tau, 0)
            p_t = softmax(teacher[i, j].reshape(-1) / tau, 0)
            total += float((p_t * np.log(p_t / p_s)).sum())
    return tau ** 2 * total / (n * c)


def dist(student: np.ndarray, teacher: np.ndarray, tau: float) -> tuple[float, float]:
    """Huang et al.: (τ²(1 − mean_pixels ρ(p_s, p_t)), τ²(1 − mean_classes ρ(p_s, p_t)))."""
    k = student.shape[1]
    p_s = softmax(student / tau, 1).transpose(0, 2, 3, 1).reshape(-1, k)
    p_t = softmax(teacher / tau, 1).transpose(0, 2, 3, 1).reshape(-1, k)
    inter = np.mean([np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(len(p_s))])
    intra = np.mean([np.corrcoef(p_s[:, c], p_t[:, c])[0, 1] for c in range(k)])
    return tau ** 2 * (1 - float(inter)), tau ** 2 * (1 - float(intra))


# ---------------------------------------------------------------- feature maps

def conv1x1(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """A bias-free 1×1 convolution: weight (out, in, 1, 1)."""
    return np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x)


def nearest_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize: output pixel i reads input pixel floor(i · in / out)."""
    h, w = labels.shape[-2:]
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return labels[:, rows][:, :, cols]


def ifv_maps(feature: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Wang et al.: per image and class, the prototype is the mean feature of the class's pixels;
    each labelled pixel's value is the cosine similarity of its feature to its prototype."""
    sims = np.zeros(labels.shape)
    valid = (labels >= 0) & (labels < num_classes)
    for b in range(labels.shape[0]):
        for k in range(num_classes):
            where = labels[b] == k
            if not where.any():
                continue
            pixels = feature[b][:, where]                # (C, P)
            proto = pixels.mean(axis=1)
            sims[b][where] = (pixels * proto[:, None]).sum(0) / (
                np.linalg.norm(pixels, axis=0) * np.linalg.norm(proto))
    return sims, valid


def ifvd(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    labels = nearest_labels(labels, student.shape[-2:])
    sim_s, valid = ifv_maps(student, labels, num_classes)
    sim_t, _ = ifv_maps(teacher, labels, num_classes)
    return float(((sim_s - sim_t) ** 2)[valid].mean())


def adaptive_pool(x: np.ndarray, size: int) -> np.ndarray:
    """Adaptive average pooling: bin i covers rows floor(i·H/l) to ceil((i+1)·H/l)."""
    h, w = x.shape[-2:]
    out = np.zeros((*x.shape[:-2], size, size))
    for i in range(size):
        for j in range(size):
            r0, r1 = i * h // size, -(-(i + 1) * h // size)
            c0, c1 = j * w // size, -(-(j + 1) * w // size)
            out[..., i, j] = x[..., r0:r1, c0:c1].mean(axis=(-2, -1))
    return out


def hcl_stage(student: np.ndarray, teacher: np.ndarray, level_weights: str = "fixed") -> float:
    """Knowledge Review / TransKD's HCL of one stage: (MSE + Σ_l c_l · MSE(pool_l)) / (1 + Σ_l c_l)
    over the levels l ∈ (4, 2, 1) smaller than the map's height; c = (1/2, 1/4, 1/8) per level
    ("fixed"), or 1/2, 1/4, … in the order the levels are used ("halved", the reference code)."""
    loss, total, halved = mse(student, teacher), 1.0, 1.0
    for size, weight in ((4, 0.5), (2, 0.25), (1, 0.125)):
        if size >= student.shape[2]:
            continue
        if level_weights == "halved":
            halved /= 2
            weight = halved
        loss += weight * mse(adaptive_pool(student, size), adaptive_pool(teacher, size))
        total += weight
    return loss / total


def hcl(students: list[np.ndarray], teachers: list[np.ndarray], level_weights: str = "fixed") -> float:
    return sum(hcl_stage(s, t, level_weights) for s, t in zip(students, teachers, strict=True))


# ---------------------------------------------------------------- adapters, on their own weights

def batch_norm(x: torch.Tensor, bn: torch.nn.Module) -> torch.Tensor:
    """Training-mode BatchNorm: batch mean and biased variance per channel, then the affine."""
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
    scale, shift = bn.weight[None, :, None, None], bn.bias[None, :, None, None]
    return (x - mean) / torch.sqrt(var + bn.eps) * scale + shift


def upsample_nearest(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Integer-factor nearest upsampling by repeating rows and columns."""
    return x.repeat_interleave(size[0] // x.shape[2], 2).repeat_interleave(size[1] // x.shape[3], 3)


def csf(features: list[torch.Tensor], units) -> list[torch.Tensor]:
    """TransKD's CSF from the paper: deep to shallow, each stage reduced to M channels (1×1 conv,
    BN); a fusing unit pools x + upsampled deeper map to a vector, squeezes it (1×1 conv, BN,
    ReLU), predicts two M-vectors and takes their softmax across the two branches as the
    weights of x and the deeper map; the fused map goes to the teacher width (3×3 conv, BN)."""
    outputs, deeper = [], None
    for unit, x in zip(reversed(list(units)), reversed(features), strict=True):
        x = batch_norm(F.conv2d(x, unit.reduce[0].weight), unit.reduce[1])
        if unit.fuse:
            deeper = upsample_nearest(deeper, x.shape[-2:])
            z = (x + deeper).mean(dim=(2, 3), keepdim=True)
            h = torch.relu(batch_norm(F.conv2d(z, unit.squeeze[0].weight), unit.squeeze[1]))
            logits = F.conv2d(h, unit.select.weight, unit.select.bias)
            m = x.shape[1]
            a, b = logits[:, :m].exp(), logits[:, m:].exp()
            x = a / (a + b) * x + b / (a + b) * deeper
        outputs.append(batch_norm(F.conv2d(x, unit.expand[0].weight, padding=1), unit.expand[1]))
        deeper = x
    return outputs[::-1]


def abf(features: list[torch.Tensor], units) -> list[torch.Tensor]:
    """Knowledge Review's ABF path: like CSF, but the fusion weights are two spatial maps,
    sigmoid(1×1 conv of the concatenated x and deeper map)."""
    outputs, deeper = [], None
    for unit, x in zip(reversed(list(units)), reversed(features), strict=True):
        x = batch_norm(F.conv2d(x, unit.reduce[0].weight), unit.reduce[1])
        if unit.attention is not None:
            deeper = upsample_nearest(deeper, x.shape[-2:])
            conv = unit.attention[0]
            att = torch.sigmoid(F.conv2d(torch.cat([x, deeper], 1), conv.weight, conv.bias))
            x = x * att[:, 0:1] + deeper * att[:, 1:2]
        outputs.append(batch_norm(F.conv2d(x, unit.expand[0].weight, padding=1), unit.expand[1]))
        deeper = x
    return outputs[::-1]


def linear(x: torch.Tensor, layer: torch.nn.Linear) -> torch.Tensor:
    out = x @ layer.weight.T
    return out + layer.bias if layer.bias is not None else out


def gl_mixer(tokens: torch.Tensor, mixer) -> torch.Tensor:
    """GL-Mixer: α · proj(softmax(Q Kᵀ / √d) V) + β · conv_a(E) ⊙ sigmoid(conv_b(E)), the
    convolutions along the token sequence (zero padding k // 2)."""
    b, n, c = tokens.shape
    heads = mixer.num_heads
    d = c // heads
    q, k, v = (linear(tokens, mixer.qkv)).split(c, dim=-1)
    q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
    attn = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
    global_ = linear((attn @ v).transpose(1, 2).reshape(b, n, c), mixer.proj)
    seq = tokens.transpose(1, 2)
    pad = mixer.local_value.kernel_size[0] // 2
    value = F.conv1d(seq, mixer.local_value.weight, mixer.local_value.bias, padding=pad)
    gate = F.conv1d(seq, mixer.local_gate.weight, mixer.local_gate.bias, padding=pad)
    local = (value * torch.sigmoid(gate)).transpose(1, 2)
    return mixer.alpha * global_ + mixer.beta * local


def patch_embed(x: torch.Tensor, embed) -> torch.Tensor:
    """An overlapping patch embedding: strided conv (padding k // 2), tokens, LayerNorm."""
    conv = embed.proj
    y = F.conv2d(x, conv.weight, conv.bias, stride=conv.stride, padding=conv.kernel_size[0] // 2)
    tokens = y.flatten(2).transpose(1, 2)
    mean = tokens.mean(-1, keepdim=True)
    var = ((tokens - mean) ** 2).mean(-1, keepdim=True)
    return (tokens - mean) / torch.sqrt(var + embed.norm.eps) * embed.norm.weight + embed.norm.bias
