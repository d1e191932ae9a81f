"""Training of the standardization model: anatomy-weighted loss, per-epoch re-styled samples, fixed seed.

Loop: every epoch draws a fresh pool of styled samples from the cached path lengths (:func:`epoch_pool`:
anatomy augmentation + a random training style per group of views, :mod:`.augment`), in a worker process by
default so that styling overlaps the network's steps; the model then takes ``reuse`` passes of shuffled
batches over the pool (random flips per batch). Adam, cosine learning-rate decay after a short warm-up. One
thread for torch: the machine is shared and small convolutions do not scale.

Loss (:func:`standardization_loss`), each image scaled by its ideal maximum (as the 2D PSNR protocol does):

* L1 of the line integral and of the bone-only line integral over the valid pixels, each pixel weighted by
  ``1 + anatomy_weight * min(1, vertebra path length / vertebra_mm)``: the projected vertebrae (the labels'
  path length) count up to ``1 + anatomy_weight`` times - the anatomy that navigation needs;
* the same weighted L1 on the image gradients of both channels (edges of bone);
* binary cross-entropy of the validity logit against the simulator's mask (all pixels).

Determinism: the pools depend only on ``(seed, epoch)`` (not on the worker), batch order and flips on
``(seed, epoch, pass)``, the network's initialisation on ``seed``; torch runs single-threaded.
"""
from __future__ import annotations

import math
import multiprocessing as mp
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentConfig, make_samples
from .data import TrainingSet
from .model import ModelConfig, StandardizerNet

__all__ = ["TrainConfig", "standardization_loss", "anatomy_weights", "epoch_pool", "train"]


@dataclass
class TrainConfig:
    steps: int = 1500
    batch: int = 8
    lr: float = 3e-3
    lr_final: float = 1e-4
    warmup: int = 30
    reuse: int = 2                 # passes over each epoch's pool
    anatomy_weight: float = 4.0
    vertebra_mm: float = 20.0
    bone_weight: float = 1.0
    grad_weight: float = 0.5
    mask_weight: float = 0.5
    seed: int = 0
    threads: int = 1
    workers: int = 1               # processes styling the next epoch's pool (0: in this process)

    def to_dict(self) -> dict:
        return asdict(self)


def anatomy_weights(vertebrae: torch.Tensor, valid: torch.Tensor, anatomy_weight: float,
                    vertebra_mm: float) -> torch.Tensor:
    """Per-pixel loss weights: 0 on invalid pixels, ``1 + anatomy_weight * min(1, vertebrae / vertebra_mm)``
    on valid ones (``vertebrae`` = path length through the vertebra labels, mm)."""
    return valid.to(torch.float32) * (1.0 + anatomy_weight * (vertebrae / vertebra_mm).clamp(0.0, 1.0))


def _wl1(d: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (d.abs() * w).sum() / w.sum().clamp_min(1.0)


def _grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:, 1:, :] - x[:, :-1, :], x[:, :, 1:] - x[:, :, :-1]


def standardization_loss(pred: tuple, batch: dict, cfg: TrainConfig) -> tuple[torch.Tensor, dict]:
    """``(total, parts)`` of the model's ``(line, bone, logit)`` against a batch's ``line``, ``bone``,
    ``vertebrae``, ``mask`` tensors ``[B, H, W]`` (see the module docstring)."""
    line_p, bone_p, logit = pred
    valid = batch["mask"] > 0
    w = anatomy_weights(batch["vertebrae"], valid, cfg.anatomy_weight, cfg.vertebra_mm)
    fill = lambda t: torch.where(valid, t, torch.zeros_like(t))  # noqa: E731
    s_line = 1.0 / fill(batch["line"]).flatten(1).amax(1).clamp_min(0.1)[:, None, None]
    s_bone = 1.0 / fill(batch["bone"]).flatten(1).amax(1).clamp_min(0.05)[:, None, None]
    d_line = (line_p - batch["line"]) * s_line
    d_bone = (bone_p - batch["bone"]) * s_bone
    parts = {"line": _wl1(d_line, w), "bone": _wl1(d_bone, w)}
    wy, wx = torch.minimum(w[:, 1:, :], w[:, :-1, :]), torch.minimum(w[:, :, 1:], w[:, :, :-1])
    g = 0.0
    for d in (d_line, d_bone):
        gy, gx = _grads(d)
        g = g + _wl1(gy, wy) + _wl1(gx, wx)
    parts["grad"] = g
    parts["mask"] = F.binary_cross_entropy_with_logits(logit, valid.to(logit.dtype))
    total = (parts["line"] + cfg.bone_weight * parts["bone"] + cfg.grad_weight * parts["grad"]
             + cfg.mask_weight * parts["mask"])
    return total, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in parts.items()}


# ------------------------------------------------------------------------------------------------ data
def epoch_pool(ts: TrainingSet, epoch: int, seed: int, aug: AugmentConfig, cache_dir=None) -> list[dict]:
    """The styled samples of one epoch: every view once, groups split into subsets of
    ``aug.views_per_style`` views that share one style draw; a subset is styled on a 2x detector with
    probability ``aug.hires_prob``. Returns one dict per view (arrays ``[H, W]``, ``style``)."""
    rng = np.random.default_rng([int(seed), int(epoch), 17])
    out = []
    k = max(1, int(aug.views_per_style))
    for views, pl in ts.groups:
        order = rng.permutation(len(views))
        for a in range(0, len(order), k):
            idx = np.sort(order[a:a + k])
            hires = bool(rng.uniform() < aug.hires_prob)
            s = make_samples(pl.subset(idx), [views[i] for i in idx], rng, aug, cache_dir, hires=hires)
            for i in range(len(idx)):
                out.append({key: s[key][i] for key in ("image", "line", "bone", "vertebrae", "mask")}
                           | {"style": s["style"]})
    return out


def _producer(ts, seed, aug, cache_dir, first, queue, stop):  # pragma: no cover - runs in a child process
    torch.set_num_threads(1)
    epoch = first
    while not stop.is_set():
        queue.put((epoch, epoch_pool(ts, epoch, seed, aug, cache_dir)))
        epoch += 1


class _Pools:
    """Epoch pools in order, from a worker process (``workers >= 1``) or computed here."""

    def __init__(self, ts, seed, aug, cache_dir, workers: int):
        self.args = (ts, seed, aug, cache_dir)
        self.proc = None
        self.epoch = 0
        if workers > 0:
            ctx = mp.get_context("fork")
            self.queue, self.stop = ctx.Queue(maxsize=1), ctx.Event()
            self.proc = ctx.Process(target=_producer, args=(*self.args, 0, self.queue, self.stop), daemon=True)
            self.proc.start()

    def next(self) -> list[dict]:
        if self.proc is None:
            ts, seed, aug, cache_dir = self.args
            pool = epoch_pool(ts, self.epoch, seed, aug, cache_dir)
        else:
            epoch, pool = self.queue.get()
            assert epoch == self.epoch
        self.epoch += 1
        return pool

    def close(self):
        if self.proc is not None:
            self.stop.set()
            try:
                while True:
                    self.queue.get_nowait()
            except Exception:  # noqa: BLE001 - drained
                pass
            self.proc.terminate()
            self.proc.join(timeout=10)


def _batches(pool: list[dict], batch: int, rng: np.random.Generator):
    """Shuffled same-size batches of tensors (random flips per batch)."""
    by_size: dict = {}
    for i, s in enumerate(pool):
        by_size.setdefault(s["image"].shape, []).append(i)
    chunks = []
    for idx in by_size.values():
        idx = list(rng.permutation(idx))
        chunks += [idx[a:a + batch] for a in range(0, len(idx), batch) if len(idx[a:a + batch]) >= 2]
    for j in rng.permutation(len(chunks)):
        items = [pool[i] for i in chunks[j]]
        b = {k: torch.from_numpy(np.stack([s[k] for s in items]).astype(np.float32))
             for k in ("image", "line", "bone", "vertebrae", "mask")}
        dims = [d for d, p in ((1, rng.uniform()), (2, rng.uniform())) if p < 0.5]
        if dims:
            b = {k: torch.flip(v, dims) for k, v in b.items()}
        b["styles"] = [s["style"] for s in items]
        yield b


def _lr(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr_final + 0.5 * (cfg.lr - cfg.lr_final) * (1.0 + math.cos(math.pi * min(1.0, t)))


def train(ts: TrainingSet, model_cfg: ModelConfig | None = None, cfg: TrainConfig | None = None,
          aug: AugmentConfig | None = None, cache_dir=None, progress: bool = True,
          log=None) -> tuple[StandardizerNet, dict]:
    """Train a :class:`StandardizerNet` on ``ts``; returns ``(model in eval mode, summary)`` with the loss
    history (every 25 steps) and times. ``log(message)`` receives progress lines when there is no bar."""
    cfg = cfg or TrainConfig()
    aug = aug or AugmentConfig()
    torch.set_num_threads(max(1, int(cfg.threads)))
    torch.manual_seed(int(cfg.seed))
    model = StandardizerNet(model_cfg or ModelConfig())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    pools = _Pools(ts, int(cfg.seed), aug, cache_dir, int(cfg.workers))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="train-standardizer", unit="step", dynamic_ncols=True)
    history, acc, n_acc = [], {}, 0
    t0 = time.perf_counter()
    t_wait = 0.0
    step = 0
    try:
        while step < cfg.steps:
            tw = time.perf_counter()
            pool = pools.next()
            t_wait += time.perf_counter() - tw
            epoch = pools.epoch - 1
            for rep in range(max(1, int(cfg.reuse))):
                rng = np.random.default_rng([int(cfg.seed), epoch, rep, 23])
                for b in _batches(pool, int(cfg.batch), rng):
                    if step >= cfg.steps:
                        break
                    for g in opt.param_groups:
                        g["lr"] = _lr(cfg, step)
                    model.train()
                    loss, parts = standardization_loss(model(b["image"]), b, cfg)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    opt.step()
                    step += 1
                    for k, v in parts.items():
                        acc[k] = acc.get(k, 0.0) + v
                    n_acc += 1
                    if step % 25 == 0 or step == cfg.steps:
                        entry = {"step": step, "epoch": epoch, "lr": _lr(cfg, step - 1),
                                 "elapsed_s": round(time.perf_counter() - t0, 1),
                                 **{k: round(v / n_acc, 5) for k, v in acc.items()}}
                        history.append(entry)
                        acc, n_acc = {}, 0
                        msg = f"line {entry['line']:.4f} bone {entry['bone']:.4f} mask {entry['mask']:.3f}"
                        if bar is not None:
                            bar.set_postfix_str(msg, refresh=False)
                        elif log is not None:
                            log(f"step {step}/{cfg.steps}: {msg}")
                    if bar is not None:
                        bar.update(1)
    finally:
        pools.close()
        if bar is not None:
            bar.close()
    model.eval()
    summary = {"steps": step, "epochs": pools.epoch, "history": history,
               "wall_time_s": round(time.perf_counter() - t0, 1), "waiting_for_data_s": round(t_wait, 1)}
    return model, summary
