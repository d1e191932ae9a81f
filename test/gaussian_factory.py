"""Random Gaussian sets shared by the renderer and voxelizer tests."""
import torch


def random_gaussians(n, seed=0, spread=20.0, scale=2.0, dtype=torch.float64):
    """``(means, scales, quats, density)``: means uniform in a cube of side ``spread`` (mm) around the origin,
    log-normal scales around ``scale``, random (unnormalised) quaternions, densities in [0, 0.05)."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g, dtype=dtype) - 0.5) * spread
    scales = scale * torch.exp(0.4 * torch.randn(n, 3, generator=g, dtype=dtype))
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    density = 0.05 * torch.rand(n, generator=g, dtype=dtype)
    return means, scales, quats, density
