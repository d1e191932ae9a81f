"""The standardization network: physics front end, a small U-Net at a fixed working resolution, and local
affine maps applied at the full detector resolution.

``image [B, H, W]`` (any style) -> ``line [B, H, W]`` (ideal line integral), ``bone [B, H, W]`` (bone-only line
integral) and ``mask_logit [B, H, W]`` (validity, > 0 = valid).

1. :func:`.frontend.front_end` gives the basis ``phi`` (``x``, ``-ln x``, ``-ln(1 - x)``, 1) and the network
   inputs at full resolution.
2. The inputs are resized to the working resolution (``work`` pixels on the longer side, area averaging; an
   image already that small is only padded to a multiple of ``2^depth``) and a U-Net (``depth`` levels,
   ``width`` channels doubling per level, a global-context vector at the bottleneck so that the whole image
   decides polarity and look-up table) predicts per pixel ``2 * N_BASIS`` coefficients and a mask logit.
3. The coefficient maps are upsampled (bilinear) to the detector and combined with the full-resolution basis:
   ``line = sum_k a_k phi_k``, ``bone = sum_k b_k phi_k``. The fine detail of a large detector therefore comes from
   the image itself through locally affine maps (guided-filter / bilateral-grid style), while the network at a
   fixed cost resolves what varies slowly: the look-up table, scatter, heel, vignetting, edge enhancement.
   Pixels at clipped codes are invalid whatever the logit says.

Cost: fixed by ``work``, about 0.7 GMAC per image at the defaults, whatever the detector size.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .frontend import LOG_SCALE, N_BASIS, N_INPUTS, front_end

__all__ = ["ModelConfig", "StandardizerNet"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`StandardizerNet` (stored beside the weights)."""

    width: int = 16        # channels of the first level (doubling per level)
    depth: int = 4         # levels (the bottleneck is work / 2^(depth - 1) pixels across)
    work: int = 128        # working resolution: pixels on the longer side

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {k: d[k] for k in ("width", "depth", "work") if k in d}
        cfg = cls(**{k: int(v) for k, v in known.items()})
        if cfg.width < 2 or cfg.depth < 1 or cfg.work < 2 ** cfg.depth:
            raise ValueError(f"invalid model configuration {cfg}")
        return cfg


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by group normalisation (4 channels per group: faster, steadier
    training than without, independent of the batch) and a leaky ReLU."""
    g = max(1, cout // 4)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(g, cout), nn.LeakyReLU(0.1, inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(g, cout), nn.LeakyReLU(0.1, inplace=True))


class StandardizerNet(nn.Module):
    """See the module docstring. ``forward(image, invalid=None)`` returns ``(line, bone, mask_logit)``."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = cfg = config or ModelConfig()
        ch = [cfg.width * 2 ** i for i in range(cfg.depth)]
        self.enc = nn.ModuleList([_block(N_INPUTS if i == 0 else ch[i - 1], ch[i]) for i in range(cfg.depth)])
        self.context = nn.Sequential(nn.Linear(ch[-1], ch[-1]), nn.LeakyReLU(0.1, inplace=True),
                                     nn.Linear(ch[-1], ch[-1]))
        self.dec = nn.ModuleList([_block(ch[i + 1] + ch[i], ch[i]) for i in range(cfg.depth - 1)])
        self.head = nn.Conv2d(ch[0], 2 * N_BASIS + 1, 1)
        with torch.no_grad():  # start from "line = 4 (-ln x)" (raw counts), bone 0, everything valid
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            self.head.bias[1] = LOG_SCALE
            self.head.bias[2 * N_BASIS] = 3.0

    @property
    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _work_size(self, H: int, W: int) -> tuple[int, int]:
        cfg = self.config
        s = min(1.0, cfg.work / max(H, W))
        m = 2 ** (cfg.depth - 1)
        return max(m, int(math.ceil(H * s / m)) * m), max(m, int(math.ceil(W * s / m)) * m)

    def coefficients(self, inputs: torch.Tensor) -> torch.Tensor:
        """The U-Net on full-resolution inputs ``[B, N_INPUTS, H, W]``: coefficient maps ``[B, 2 N_BASIS + 1, h, w]``
        at the working resolution."""
        B, _, H, W = inputs.shape
        h, w = self._work_size(H, W)
        if (h, w) == (H, W):
            z = inputs
        elif h <= H and w <= W:
            z = F.adaptive_avg_pool2d(inputs, (h, w))
        else:
            z = F.interpolate(inputs, size=(h, w), mode="bilinear", align_corners=False)
        skips = []
        for i, blk in enumerate(self.enc):
            if i:
                z = F.avg_pool2d(z, 2)
            z = blk(z)
            skips.append(z)
        z = z + self.context(z.mean(dim=(2, 3)))[:, :, None, None]
        for i in reversed(range(len(self.dec))):
            z = F.interpolate(z, size=skips[i].shape[-2:], mode="bilinear", align_corners=False)
            z = self.dec[i](torch.cat([z, skips[i]], 1))
        return self.head(z)

    def forward(self, image: torch.Tensor, invalid: torch.Tensor | None = None):
        """``image [B, H, W]`` (raw values, any style) -> ``(line, bone, mask_logit)``, each ``[B, H, W]``.
        ``invalid`` (bool, optional): pixels known to carry nothing (left out of the normalisation)."""
        basis, inputs = front_end(image, invalid)
        H, W = image.shape[-2:]
        coef = self.coefficients(inputs)
        if coef.shape[-2:] != (H, W):
            coef = F.interpolate(coef, size=(H, W), mode="bilinear", align_corners=False)
        line = (coef[:, :N_BASIS] * basis).sum(1)
        bone = (coef[:, N_BASIS:2 * N_BASIS] * basis).sum(1)
        clipped = (inputs[:, 3] + inputs[:, 4]) > 0
        logit = coef[:, 2 * N_BASIS].masked_fill(clipped, -20.0)
        return line, bone, logit
