"""mmseg's ``resize``: ``F.interpolate`` with ``torch.Size`` sizes turned into int tuples."""

import torch
import torch.nn.functional as F


def resize(input, size=None, scale_factor=None, mode="nearest", align_corners=None, warning=True):
    if isinstance(size, torch.Size):
        size = tuple(int(x) for x in size)
    return F.interpolate(input, size, scale_factor, mode, align_corners)
