"""The optimiser: Adam with explicit per-parameter state (so densification, pruning and saving are plain tensor
operations) and R²-Gaussian's learning-rate schedule."""
from __future__ import annotations

import torch

__all__ = ["Adam", "learning_rates"]


class Adam:
    """Adam (Kingma & Ba) with a per-row step count, so rows added by densification start their own bias
    correction. ``eps`` as R²-Gaussian (1e-15)."""

    def __init__(self, eps=1e-15, betas=(0.9, 0.999)):
        self.eps, self.b1, self.b2 = eps, betas[0], betas[1]
        self.state: dict[str, dict[str, torch.Tensor]] = {}

    def step(self, params: dict[str, torch.Tensor], lrs: dict[str, float]):
        with torch.no_grad():
            for name, p in params.items():
                if p.grad is None:
                    continue
                st = self.state.get(name)
                if st is None or st["m"].shape != p.shape:
                    st = {"m": torch.zeros_like(p), "v": torch.zeros_like(p),
                          "t": torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)}
                    self.state[name] = st
                g = p.grad
                st["t"] += 1
                st["m"].mul_(self.b1).add_(g, alpha=1 - self.b1)
                st["v"].mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
                shape = (-1,) + (1,) * (p.ndim - 1)
                bc1 = (1 - self.b1 ** st["t"]).view(shape)
                bc2 = (1 - self.b2 ** st["t"]).view(shape)
                p.sub_(lrs[name] * (st["m"] / bc1) / ((st["v"] / bc2).sqrt() + self.eps))
                p.grad = None

    def select(self, keep: torch.Tensor):
        """Keep the rows ``keep`` (a boolean mask or index tensor) of every state tensor."""
        for st in self.state.values():
            for k in st:
                st[k] = st[k][keep]

    def extend(self, n: int):
        """Append ``n`` zero rows to every state tensor (new Gaussians)."""
        for st in self.state.values():
            for k in st:
                st[k] = torch.cat([st[k], torch.zeros((n,) + st[k].shape[1:], dtype=st[k].dtype,
                                                      device=st[k].device)])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"{name}.{k}": v.detach().cpu().contiguous() for name, st in self.state.items() for k, v in st.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], device) -> None:
        for key, v in tensors.items():
            name, k = key.split(".")
            self.state.setdefault(name, {})[k] = v.to(device)


def learning_rates(cfg, it: int) -> dict[str, float]:
    """Per-parameter-group rates at iteration ``it`` of the schedule (``cfg`` an EngineConfig): exponential decay
    from the configured rates to ``lr_final_factor`` x over ``iterations`` (then constant), times a linear
    warm-up over the first ``lr_warmup`` iterations (Adam's first steps move every parameter by about its
    rate)."""
    o = cfg.optimiser
    t = min(1.0, it / max(1, cfg.iterations))
    f = o.lr_final_factor ** t
    if o.lr_warmup > 0:
        f *= min(1.0, (it + 1) / o.lr_warmup)
    return {"means": o.lr_means * f, "raw_density": o.lr_density * f,
            "raw_scales": o.lr_scales * f, "raw_quats": o.lr_quats * f}
