"""`ixgs demo` end to end on small data (the README's main command, its --quick variant, ROI-only)."""
import json

import numpy as np

from ixgs_ros.cli import main
from ixgs_ros.core.volume import load_nifti


def test_demo_quick_writes_scores_and_pictures(tmp_path):
    out = tmp_path / "demo"
    rc = main(["demo", "--quick", "--iterations", "20", "--mode", "roi-only", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scan"]["views"] == 12 and summary["scan"]["grid_shape"] == [64, 64, 64]
    methods = summary["methods"]
    assert set(methods) == {"ixgs (R²-Gaussian)", "RTK SART"}
    for name, m in methods.items():
        # real reconstructions of the T12 region: far above the empty volume (8 dB), finite surface distances
        assert 18.0 < m["psnr_3d_db"] < 45.0, (name, m)
        assert 0.4 < m["ssim_3d"] <= 1.0, (name, m)
        assert np.isfinite(m["bone_surface_mean_mm"]) and m["time_s"] > 0
    for pic in ("comparison.png", "scan/preview.png", "ixgs/mpr.png", "ixgs/report.html"):
        assert (out / pic).stat().st_size > 1000, pic
    vol, grid = load_nifti(out / "ixgs" / "volume.nii.gz")
    gt, gt_grid = load_nifti(out / "scan" / "gt.nii.gz")
    assert vol.shape == gt.shape and grid == gt_grid
    # the summary's PSNR is the one of the written volume
    from ixgs_ros.evaluation.metrics import psnr_3d
    assert abs(psnr_3d(vol, gt) - methods["ixgs (R²-Gaussian)"]["psnr_3d_db"]) < 1e-3
    assert "ixgs" in (out / "summary.md").read_text()
    # the baseline names the grid RTK solved on (ROI-only views: the ROI's own grid, no caveat)
    rtk = methods["RTK SART"]
    assert rtk["solve_spacing_mm"] == 2.0 and rtk["iterations"] >= 1 and len(rtk["solve_shape"]) == 3
    md = (out / "summary.md").read_text()
    assert "RTK SART: " in md and "passes on a" in md and "coarser than the output grid" not in md


def test_demo_names_the_rtk_grid_and_flags_a_coarse_one():
    from ixgs_ros.commands.demo import rtk_grid_note

    fine = {"iterations": 10, "solve_shape": [80, 80, 80], "solve_spacing_mm": 2.0}
    coarse = {"iterations": 10, "solve_shape": [189, 189, 116], "solve_spacing_mm": 2.75}
    assert rtk_grid_note("ixgs", {"psnr_3d_db": 30.0}, 1.0) is None
    assert rtk_grid_note("RTK SART", fine, 2.0).startswith("RTK SART: 10 passes on a 80x80x80 grid at 2 mm")
    assert "coarser" not in rtk_grid_note("RTK SART", fine, 2.0)
    got = rtk_grid_note("RTK SART", coarse, 1.0)
    assert "189x189x116 grid at 2.75 mm" in got and "coarser than the output grid" in got
    fdk = {"method": "fdk", "iterations": 1, "solve_shape": [64, 64, 64], "solve_spacing_mm": 2.0}
    assert rtk_grid_note("RTK FDK", fdk, 2.0) == "RTK FDK: on the 64x64x64 output grid at 2 mm"
