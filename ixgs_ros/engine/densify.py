"""Adaptive density control as strategy objects (as gsplat does it): which Gaussians to clone, split or prune,
decided from statistics gathered after each backward pass.

* :class:`NoDensification` (``densification.strategy: none``, the default): the Gaussians of the lattice fit
  stay as they are. From the TV-SART start every densification lowered the accuracy within CPU schedules.
* :class:`SplitClone` (``split_clone``): R²-Gaussian's rule for long (GPU) schedules. Every ``interval``
  iterations from ``start`` until ``stop_fraction`` of the schedule, the ``fraction`` of Gaussians with the
  largest mean positional gradient are cloned (small ones) or split in two (large ones); mass is conserved
  (a density field must keep its integral, or every split darkens the projections). Gaussians whose density
  falls under ``prune_density`` are removed.
"""
from __future__ import annotations

import math

import torch

from . import render as gr
from .model import GaussianModel, inverse_softplus

__all__ = ["DensificationStrategy", "NoDensification", "SplitClone", "make_strategy", "select"]


def select(model: GaussianModel, optim, keep: torch.Tensor) -> None:
    """Keep only the Gaussians ``keep`` (mask) in the model and the optimiser's state."""
    params = {k: v.detach()[keep] for k, v in model.parameters().items()}
    model.set_parameters(params, model.group[keep])
    optim.select(keep)


class DensificationStrategy:
    """Interface: :meth:`reset` after the model is (re)built, :meth:`after_backward` every iteration,
    :meth:`step` after the optimiser's update; its statistics are saved with the engine state."""
    name = "none"

    def reset(self, model: GaussianModel) -> None:
        pass

    def after_backward(self, model: GaussianModel) -> None:
        pass

    def step(self, model: GaussianModel, optim, it: int, iterations: int, gen: torch.Generator) -> None:
        pass

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device) -> None:
        pass


class NoDensification(DensificationStrategy):
    """The Gaussians stay as placed."""


class SplitClone(DensificationStrategy):
    name = "split_clone"

    def __init__(self, cfg):
        self.cfg = cfg  # a DensificationConfig
        self.accum: torch.Tensor | None = None
        self.count: torch.Tensor | None = None

    def reset(self, model):
        n = len(model)
        dev = model.means.device
        self.accum = torch.zeros(n, device=dev)
        self.count = torch.zeros(n, device=dev)

    def after_backward(self, model):
        g = model.means.grad
        if g is None:
            return
        norm = g.detach().norm(dim=1)
        self.accum += norm
        self.count += (norm > 0).float()

    def step(self, model, optim, it, iterations, gen):
        cfg = self.cfg
        if it < cfg.start or it % cfg.interval != 0:
            return
        with torch.no_grad():
            if it <= cfg.stop_fraction * iterations:
                avg = self.accum / self.count.clamp_min(1)
                fine = (model.group == 0) & (self.count > 0)
                room = cfg.max_gaussians - len(model)
                k = min(int(cfg.fraction * int((model.group == 0).sum())), room)
                if k > 0 and int(fine.sum()) > 0:
                    cand = torch.nonzero(fine).flatten()
                    k = min(k, len(cand))
                    self._densify(model, optim, cand[torch.topk(avg[cand], k).indices], gen)
            keep = model.density.detach() > cfg.prune_density
            if not bool(keep.all()):
                select(model, optim, keep)
        self.reset(model)

    def _densify(self, m: GaussianModel, optim, idx: torch.Tensor, gen: torch.Generator) -> None:
        """Clone: an identical copy, parent and child each keep half the density. Split: the child is sampled
        inside the parent, both shrink by 1.6 per axis and share the parent's mass."""
        params = {k: v.detach().clone() for k, v in m.parameters().items()}
        scales = m.scales.detach()[idx]
        dens = m.density.detach()[idx]
        big = scales.max(1).values > self.cfg.split_scale
        new_means = params["means"][idx].clone()
        new_dens = dens / 2
        if bool(big.any()):
            bi = idx[big]
            cov = gr.covariance_from_scale_rot(scales[big], m.quats.detach()[bi])
            L = torch.linalg.cholesky(cov + 1e-12 * torch.eye(3, device=cov.device))
            z = torch.randn(len(bi), 3, generator=gen).to(cov)
            new_means[big] = params["means"][bi] + (L @ z[:, :, None])[:, :, 0]
            shrunk = (scales[big] / 1.6).clamp(m.scale_min * 1.0001, m.scale_max * 0.9999)
            lo, hi = math.log(m.scale_min), math.log(m.scale_max)
            params["raw_scales"][bi] = torch.logit(((shrunk.log() - lo) / (hi - lo)).clamp(1e-6, 1 - 1e-6))
            new_dens[big] = dens[big] * (scales[big].prod(1) / shrunk.prod(1)) / 2
        raw = inverse_softplus(new_dens)
        params["raw_density"][idx] = raw
        new = {"means": new_means, "raw_scales": params["raw_scales"][idx].clone(),
               "raw_quats": params["raw_quats"][idx].clone(), "raw_density": raw.clone()}
        merged = {k: torch.cat([params[k], new[k]]) for k in params}
        m.set_parameters(merged, torch.cat([m.group, m.group[idx]]))
        optim.extend(len(idx))

    def state_tensors(self):
        if self.accum is None:
            return {}
        return {"accum": self.accum.cpu(), "count": self.count.cpu()}

    def load_state_tensors(self, tensors, device):
        if "accum" in tensors:
            self.accum, self.count = tensors["accum"].to(device), tensors["count"].to(device)


def make_strategy(cfg) -> DensificationStrategy:
    """The strategy named by ``cfg.strategy`` (a DensificationConfig)."""
    if cfg.strategy == "split_clone":
        return SplitClone(cfg)
    return NoDensification()
