"""Summary of the GPU check's full reconstructions (recon_short.json, recon_long.json in the folder given):
wall time, time per init stage, iterations, Gaussians and, with a ground truth, 3D PSNR/SSIM; one JSON line
(gpu_recon_summary.json) and a table."""
import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    out = Path(folder)
    rows = []
    for name in ("recon_short", "recon_long"):
        p = out / f"{name}.json"
        if not p.exists():
            continue
        r = json.loads(p.read_text())
        m = r.get("metrics_3d", {})
        h = r.get("holdout_2d", {})
        rows.append({"run": name, "iterations": r.get("iterations"), "wall_s": r.get("wall_time_s"),
                     "init_stages_s": r.get("init_stages_s"), "gaussians": r.get("num_gaussians"),
                     "psnr_3d": m.get("psnr"), "ssim_3d": m.get("ssim"), "heldout_psnr_2d": h.get("psnr_mean"),
                     "device": r.get("config", {}).get("device"), "backend": r.get("config", {}).get("backend")})
    (out / "gpu_recon_summary.json").write_text(json.dumps(rows, indent=1))
    print("| run | iterations | wall (s) | Gaussians | 3D PSNR | 3D SSIM | held-out 2D PSNR |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        f = (lambda v, spec: "-" if v is None else format(v, spec))
        print(f"| {r['run']} | {r['iterations']} | {f(r['wall_s'], '.1f')} | {r['gaussians']} | "
              f"{f(r['psnr_3d'], '.2f')} | {f(r['ssim_3d'], '.4f')} | {f(r['heldout_psnr_2d'], '.2f')} |")
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
