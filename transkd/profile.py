"""Model sizes: parameters, MACs in the paper's convention, and FLOPs including attention.

Two conventions, always reported under their own names:

* ``macs_conv_linear`` — the counter the TransKD authors used for their tables: mmcv 1.3's
  ``get_model_complexity_info`` (a fork of ptflops), which hooks ``nn.Module`` layers by type and
  ignores everything done by functions (attention matrix products, ``F.interpolate``, residual
  additions). Its exact per-layer rules are in :func:`count_macs_conv_linear`. With them,
  SegFormer-B0/B2 (20 outputs, 1×3×512×1024) come out at 3.72 M / 13.67 G and 27.36 M / 113.84 G,
  the paper's numbers. (The thop counter pinned in the authors' requirements gives 13.64 G /
  113.74 G: it skips LayerNorm and ReLU, so it is not the one behind the tables.)
* ``flops_total`` — ``torch.utils.flop_counter``: 2 FLOPs per multiply-accumulate of every
  convolution, matrix product and attention product (q·kᵀ and attention·v), whether a module or
  a function computes it; bias, normalisation, activation and interpolation are not counted.
  ``macs_total = flops_total // 2`` (B0: 17.77 G, B2: 129.19 G at 512×1024). The spec's "about
  17.9 G / 129.7 G counting attention" is fvcore's convention, which adds 5 per LayerNorm element,
  2 per BatchNorm element and 4 per output element of bilinear resizing on top of these.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils import flop_counter

from .errors import ConfigError
from .models import create_model, get_entry, list_models

#: Output classes of a model built by name to be measured: the paper's Cityscapes setting
#: (19 classes + void), so sizes compare with its tables.
DEFAULT_NUM_CLASSES = 20

MACS_CONVENTION = (
    "mmcv-1.3 get_model_complexity_info rules (the TransKD paper's counter): per output element of "
    "a conv in/groups*kh*kw MACs (+1 with bias), per output element of a linear in_features MACs "
    "(bias not counted), BatchNorm/LayerNorm/GroupNorm/InstanceNorm 2 per element (1 without "
    "affine), ReLU-family 1 per element, pooling 1 per input element, nn.Upsample 1 per output "
    "element; attention products, GELU, softmax and functional ops are not counted")
FLOPS_CONVENTION = (
    "torch.utils.flop_counter: 2 FLOPs per multiply-accumulate of conv, matmul and attention "
    "(q @ k^T, attn @ v); bias, norms, activations and interpolation not counted")
MACS_TOTAL_CONVENTION = "flops_total / 2: multiply-accumulates of conv, matmul and attention products"

# Layer types of the paper's counter. Matched with isinstance (mmcv matches exact types), so a
# subclass such as a BatchNorm2d with a single-sample fallback is counted like its base.
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ACTIVATION = (nn.ReLU, nn.PReLU, nn.ELU, nn.LeakyReLU, nn.ReLU6)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
         nn.LayerNorm)


@dataclass
class MacCount:
    """MACs in the paper's convention, with the share of each rule.

    ``breakdown`` keys: ``conv`` and ``linear`` (weight multiply-accumulates), ``conv_bias``,
    ``norm``, ``activation``, ``pool``, ``upsample``.
    """

    breakdown: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.breakdown.values())

    @property
    def weights_only(self) -> int:
        """Only the weight products of conv and linear layers (no bias, norm or activation)."""
        return self.breakdown.get("conv", 0) + self.breakdown.get("linear", 0)


def layer_macs(module: nn.Module, inputs: tuple, output: Any) -> dict[str, int]:
    """MACs of one call of ``module`` under the paper's rules (empty for uncounted layers)."""
    if isinstance(module, nn.ConvTranspose2d):
        # Every input position scatters a kh×kw×(out/groups) patch for each input channel.
        x = inputs[0]
        positions = x.shape[0] * x.shape[2:].numel()
        per_position = module.in_channels * (module.out_channels // module.groups)
        macs = {"conv": positions * per_position * _prod(module.kernel_size)}
        if module.bias is not None:
            macs["conv_bias"] = output.numel()
        return macs
    if isinstance(module, _CONV):
        kernel = _prod(module.kernel_size)
        macs = {"conv": output.numel() * (module.in_channels // module.groups) * kernel}
        if module.bias is not None:
            macs["conv_bias"] = output.numel()
        return macs
    if isinstance(module, nn.Linear):
        return {"linear": output.numel() * module.in_features}
    if isinstance(module, _NORM):
        affine = getattr(module, "affine", False) or getattr(module, "elementwise_affine", False)
        return {"norm": inputs[0].numel() * (2 if affine else 1)}
    if isinstance(module, _ACTIVATION):
        return {"activation": output.numel()}
    if isinstance(module, _POOL):
        return {"pool": inputs[0].numel()}
    if isinstance(module, nn.Upsample):
        return {"upsample": output.numel()}
    return {}


def _prod(values: Iterable[int]) -> int:
    result = 1
    for v in values:
        result *= int(v)
    return result


class MacCounter:
    """Context manager: while active, every call of a layer under ``roots`` adds its MACs.

    A module reachable from several roots is hooked once; modules in ``exclude`` (and their
    children) are never hooked. A layer called twice is counted twice.
    """

    def __init__(self, *roots: nn.Module, exclude: Iterable[nn.Module] = ()) -> None:
        self.roots = roots
        self.excluded = {id(m) for ex in exclude for m in ex.modules()}
        self.counts: Counter[str] = Counter()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._restore: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> MacCounter:
        # Count the architecture as published: heads that compute the same function more cheaply
        # (SegFormerHead.fused_projection) run their literal reference computation meanwhile.
        self._restore = [(m, m.fused_projection) for root in self.roots for m in root.modules()
                         if hasattr(m, "fused_projection")]
        for module, _ in self._restore:
            module.fused_projection = False
        seen = set(self.excluded)
        for root in self.roots:
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                self._handles.append(module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc_info) -> None:
        for module, flag in self._restore:
            module.fused_projection = flag
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        self.counts.update(layer_macs(module, inputs, output))

    def result(self) -> MacCount:
        return MacCount({k: int(v) for k, v in sorted(self.counts.items()) if v})


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed,
                         output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each gradient asked for (input, weight) costs what the forward did. torch's own formula
    ignores ``groups`` here and counts a depth-wise convolution's backward ``groups`` times over
    (a 256-channel 3×3 one at 32×32: 1.2 GFLOP instead of 19 MFLOP)."""
    if transposed:
        return flop_counter.conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding,
                                               dilation, transposed, output_padding, groups,
                                               output_mask, out_shape)
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                         **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    """oneDNN's linear (``models.linear``): 2 × rows × in × out, the bias not counted (as addmm)."""
    rows = math.prod(x_shape[:-1])
    return 2 * rows * w_shape[1] * w_shape[0]


def flop_counter_mode() -> flop_counter.FlopCounterMode:
    """A silent ``FlopCounterMode`` that also counts attention run through
    ``F.scaled_dot_product_attention`` on the CPU, and linear layers run by oneDNN.

    On the CPU the fused kernel is reached from ``aten.scaled_dot_product_attention`` itself,
    which torch's table does not list, so attention would count as zero; mapping that op (and
    the CPU flash kernel) to torch's own SDPA formula fixes it without double counting, because a
    mapped op is not decomposed further. ``mkldnn::_linear_pointwise`` (what ``models.linear``
    calls where oneDNN takes the CPU products) is not in torch's table either.
    """
    aten = torch.ops.aten
    names = ("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu")
    mapping = {getattr(aten, name): _sdpa_flops for name in names if hasattr(aten, name)}
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if backward is not None:  # a training step's backward through the CPU kernel
        mapping[backward] = _sdpa_backward_flops
    mapping[aten.convolution_backward] = _conv_backward_flops
    onednn_linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if onednn_linear is not None:
        mapping[onednn_linear] = _onednn_linear_flops
    return flop_counter.FlopCounterMode(display=False, custom_mapping=mapping)


def _as_args(inputs: Any) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


def _roots(target: Any, modules: Iterable[nn.Module] | None) -> list[nn.Module]:
    if modules is not None:
        return list(modules)
    if isinstance(target, nn.Module):
        return [target]
    raise TypeError("counting MACs of a plain callable needs modules=[...] to watch")


def count_params(module: nn.Module | Iterable[nn.Parameter]) -> int:
    """Number of parameter elements (shared tensors once) of a module or a parameter iterable."""
    params = module.parameters() if isinstance(module, nn.Module) else module
    unique = {id(p): p.numel() for p in params}
    return sum(unique.values())


def count_macs_conv_linear(target: nn.Module | Callable, inputs: Any, *,
                           modules: Iterable[nn.Module] | None = None) -> MacCount:
    """MACs of one call ``target(*inputs)`` in the TransKD paper's convention (mmcv 1.3 rules).

    Rules per call of a layer, on the whole batch given:

    - ``nn.Conv1d/2d/3d``: output elements × in_channels/groups × kernel size, plus one per
      output element when the conv has a bias.
    - ``nn.ConvTranspose2d``: input positions × in_channels × out_channels/groups × kernel size,
      plus one per output element with a bias.
    - ``nn.Linear``: output elements × in_features; the bias is not counted.
    - BatchNorm, LayerNorm, GroupNorm, InstanceNorm: 2 per input element with an affine
      transform, 1 without.
    - ``nn.ReLU``, ``PReLU``, ``ELU``, ``LeakyReLU``, ``ReLU6``: 1 per output element.
    - Max/average pooling (also adaptive): 1 per input element.
    - ``nn.Upsample``: 1 per output element.
    - Anything else is zero: GELU, softmax, dropout, and every functional op (attention matrix
      products inside ``F.scaled_dot_product_attention``, ``F.interpolate``, additions).

    ``inputs`` is a tensor or a tuple of positional arguments. A plain callable needs
    ``modules``: the modules whose layers are watched. Runs under ``torch.inference_mode``;
    the training/eval mode of the modules is left as it is.
    """
    with torch.inference_mode(), MacCounter(*_roots(target, modules)) as counter:
        target(*_as_args(inputs))
    return counter.result()


def count_flops_total(target: Callable, inputs: Any) -> int:
    """FLOPs of one call ``target(*inputs)`` with torch's flop counter, attention included.

    Counts 2 FLOPs per multiply-accumulate (so ``count_flops_total(...) // 2`` are MACs).
    """
    mode = flop_counter_mode()
    with torch.inference_mode(), mode:
        target(*_as_args(inputs))
    return int(mode.get_total_flops())


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put modules in eval mode (as the paper's counter does) and restore their modes after."""
    states = [(m, m.training) for root in modules for m in root.modules()]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for module, training in states:
            module.training = training


def check_input_size(input_size: Iterable[int]) -> tuple[int, int]:
    """``(height, width)`` as positive integers, or a one-sentence ConfigError."""
    size = tuple(input_size)
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ConfigError(f"input size must be two positive integers (height width), got "
                          f"{' '.join(map(str, size)) or 'nothing'}")
    return size


def _model_sample(model: nn.Module, input_size: Iterable[int]) -> torch.Tensor:
    height, width = check_input_size(input_size)
    in_chans = getattr(getattr(getattr(model, "encoder", None), "config", None), "in_chans", 3)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.float32
    return torch.zeros(1, in_chans, height, width, device=device, dtype=dtype)


def _run_on_sample(module: nn.Module, sample: torch.Tensor, *extra: torch.Tensor) -> None:
    """Run the counting forward; a failure (typically an input too small for the network's
    strides) becomes one ConfigError that keeps torch's reason."""
    try:
        module(sample, *extra)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{getattr(module, 'model_name', type(module).__name__)} failed on "
                          f"input size {sample.shape[2]}x{sample.shape[3]}: {reason}") from exc


def profile_module(model: nn.Module, input_size: Iterable[int]) -> dict[str, Any]:
    """Parameters, paper-convention MACs and flop-counter FLOPs of ``model`` on one image.

    One forward pass in eval mode, without autograd, measures both conventions.
    """
    sample = _model_sample(model, input_size)
    mode = flop_counter_mode()
    with eval_mode(model), torch.inference_mode(), MacCounter(model) as counter, mode:
        _run_on_sample(model, sample)
    macs = counter.result()
    flops = int(mode.get_total_flops())
    return {
        "model": getattr(model, "model_name", type(model).__name__),
        "num_classes": getattr(model, "num_classes", None),
        "input_size": list(sample.shape),
        "params": count_params(model),
        "macs_conv_linear": macs.total,
        "macs_breakdown": macs.breakdown,
        "flops_total": flops,
        "macs_total": flops // 2,
        "convention": {"macs_conv_linear": MACS_CONVENTION, "flops_total": FLOPS_CONVENTION,
                       "macs_total": MACS_TOTAL_CONVENTION},
    }


def profile_model(name: str, num_classes: int, input_size: Iterable[int] = (512, 1024),
                  **model_options: Any) -> dict[str, Any]:
    """Build the segmentation model ``name`` with random weights and profile it on one image."""
    try:
        known = get_entry(name).kind == "segmentor"  # registered, or an hf:/timm: network
    except ConfigError:
        known = False
    if not known:
        segmentors = list_models(kind="segmentor")
        raise ConfigError(f"unknown segmentation model {name!r}; known models: {', '.join(segmentors)}")
    check_input_size(input_size)
    return profile_module(create_model(name, num_classes=num_classes, **model_options), input_size)


def profile_distiller(distiller: nn.Module, input_size: Iterable[int] = (512, 1024)) -> dict[str, Any]:
    """Training-time sizes: the student plus every method's adapters, never the teacher.

    Runs ``distiller(images, targets)`` once on one image (eval mode, no autograd) and counts the
    paper-convention MACs of every layer of ``distiller.student`` and ``distiller.methods`` that
    runs — adapters included, whatever the method. Parameters are those of the student and
    ``distiller.extra_parameters()``.
    """
    student = distiller.student
    sample = _model_sample(student, input_size)
    targets = torch.zeros((1, *sample.shape[2:]), dtype=torch.long, device=sample.device)
    teacher = [distiller.teacher] if distiller.teacher is not None else []
    watched = [student, distiller.methods]
    with eval_mode(distiller, *teacher), \
            MacCounter(*watched, exclude=teacher) as everything, \
            MacCounter(student, exclude=teacher) as student_only, \
            torch.inference_mode():
        _run_on_sample(distiller, sample, targets)
    total, own = everything.result(), student_only.result()
    student_params = count_params(student)
    training_params = count_params([*student.parameters(), *distiller.extra_parameters()])
    return {
        "method": getattr(distiller, "method_name", type(distiller).__name__),
        "input_size": list(sample.shape),
        "params_training": training_params,
        "params_adapters": training_params - student_params,
        "macs_conv_linear_training": total.total,
        "macs_conv_linear_adapters": total.total - own.total,
        "convention": {"macs_conv_linear_training": MACS_CONVENTION},
    }


TRAINING_MACS_CONVENTION = (
    "training MACs = steps × images per step × (3 × (student + adapters forward MACs) + teacher "
    "forward MACs): a backward pass counts as 2× its forward (gradients of activations and of "
    "weights), the frozen teacher runs forward only; forward MACs in the paper's convention "
    "(conv and linear layers, " + MACS_CONVENTION.split(": ", 1)[0] + ") on one image at the "
    "training input size")


def training_macs(distiller: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> dict[str, int]:
    """Forward MACs per image of the student, the adapters and the teacher in one training step,
    and the training MACs per image under :data:`TRAINING_MACS_CONVENTION`.

    ``images``/``targets`` are one training sample (batch of 1) at the training input size; the
    forward runs in eval mode without autograd, as the paper's counter does."""
    student = distiller.student
    teacher = [distiller.teacher] if getattr(distiller, "teacher", None) is not None else []
    with eval_mode(distiller, *teacher), \
            MacCounter(student, distiller.methods, exclude=teacher) as trained, \
            MacCounter(student, exclude=teacher) as own, \
            MacCounter(*teacher) as frozen, torch.inference_mode():
        _run_on_sample(distiller, images, targets)
    student_macs, trained_macs, teacher_macs = own.result().total, trained.result().total, \
        frozen.result().total
    return {"student_forward": student_macs, "adapters_forward": trained_macs - student_macs,
            "teacher_forward": teacher_macs, "per_image": 3 * trained_macs + teacher_macs}
