"""`ixgs reconstruct` public contract on a tiny analytic scan: files, grid, report, navigation outputs, errors."""
import json

import nibabel as nib
import numpy as np
import pytest

from ixgs_ros.cli import main
from ixgs_ros.engine.model import GaussianModel
from ixgs_ros.core.geometry import View, look_at
from ixgs_ros.simulation.phantom import Ellipsoid, make_scan, voxelize
from ixgs_ros.core.volume import Grid, save_nifti

SMALL_ENGINE = {"lattice": {"cg_iterations": 10}, "optimiser": {"tv_size": 8}, "init": {"passes": 2},
                "exterior": {"passes": 2, "refine_passes": 2}}


PHANTOM = [Ellipsoid((0, 0, 0), (22, 18, 26), mu=0.02),
           Ellipsoid((3, -2, 0), (8, 8, 12), mu=0.03)]  # the second adds to the first: 0.05 /mm inside


def _views(n=8, size=32):
    out = []
    for k in range(n):
        a = np.deg2rad(-80 + 160 * k / (n - 1))
        src = 400 * np.array([np.sin(a), -np.cos(a), 0.1])
        K = np.array([[200.0, 0, size / 2 - 0.5 + 1.5], [0, 200.0, size / 2 - 0.5 - 1.0], [0, 0, 1]])
        out.append(View(K, look_at(src, (0, 0, 0), (0, 0, 1)), size, size, meta={"sdd": 400.0 * 1.75}))
    return out


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scan")
    make_scan(PHANTOM, _views()).save(d)
    return d


@pytest.fixture(scope="module")
def engine_cfg(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "engine.json"
    p.write_text(json.dumps(SMALL_ENGINE))
    return p


def test_reconstruct_writes_contract_outputs(scan_dir, engine_cfg, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["reconstruct", str(scan_dir), "--out", str(out), "--size", "24", "--spacing", "2.5",
               "--center", "0", "0", "0", "--iterations", "30", "--seed", "1", "--holdout", "1",
               "--config", str(engine_cfg), "--quiet"])
    assert rc == 0
    img = nib.load(out / "volume.nii.gz")
    assert img.shape == (24, 24, 24) and img.get_data_dtype() == np.float32
    assert np.allclose(img.affine, Grid.centered(24, 2.5, (0, 0, 0)).affine)
    vol = np.asarray(img.dataobj)
    # the dense part of the phantom is brighter than the periphery, values are attenuation in 1/mm
    c = vol[12, 11, 12]
    assert 0.02 < c < 0.09 and vol[0, 0, 0] < 0.5 * c
    rep = json.loads((out / "report.json").read_text())
    for key in ("wall_time_s", "iterations", "num_gaussians", "loss_curve", "holdout_2d", "peak_rss_mb"):
        assert key in rep, key
    assert rep["iterations"] == 30 and len(rep["views_holdout"]) == 1
    assert np.isfinite(rep["holdout_2d"]["psnr_mean"])
    model, frame = GaussianModel.load(out / "gaussians.safetensors")
    assert len(model) == rep["num_gaussians"] and frame is not None
    for f in ("mpr.png", "report.html", "mesh/bone.ply", "mesh/bone.stl", "volume_hu.nrrd"):
        assert (out / f).exists(), f
    assert any((out / "render").glob("render_iso_*.png"))
    assert "done in" in capsys.readouterr().out


def test_reconstruct_like_uses_exact_grid_and_reports_3d_metrics(scan_dir, engine_cfg, tmp_path, capsys):
    """(Without --quiet: the progress bar names the initialisation's stages while they run.)"""
    grid = Grid((20, 22, 18), np.array([[2.4, 0, 0, -24], [0, 2.4, 0, -26], [0, 0, 2.8, -24], [0, 0, 0, 1.0]]))
    ref = tmp_path / "ref.nii.gz"
    save_nifti(ref, voxelize(PHANTOM, grid), grid)
    out = tmp_path / "out"
    rc = main(["reconstruct", str(scan_dir), "--out", str(out), "--like", str(ref), "--iterations", "5",
               "--config", str(engine_cfg), "--gt", str(ref), "--no-navigation"])
    assert rc == 0
    img = nib.load(out / "volume.nii.gz")
    assert img.shape == grid.shape and np.allclose(img.affine, grid.affine)
    rep = json.loads((out / "report.json").read_text())
    m = rep["metrics_3d"]
    assert np.isfinite(m["psnr"]) and 0 < m["ssim"] <= 1
    stages = rep["init_stages_s"]
    assert [k.split(" (")[0] for k in stages][-1] == "Gaussian lattice fit", stages
    assert any(k.startswith("TV-SART") for k in stages) and all(v >= 0 for v in stages.values())
    err = capsys.readouterr().err
    assert "init: TV-SART" in err and "init: Gaussian lattice fit" in err and "ixgs reconstruct" in err


def test_reconstruct_bad_input_gives_one_clear_error(scan_dir, tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "missing" in err and "Traceback" not in err
    assert main(["reconstruct", str(scan_dir), "--out", str(tmp_path / "o"), "--like", "x.nii.gz",
                 "--size", "8"]) == 2
    assert "--like cannot be combined" in capsys.readouterr().err


def test_reconstruct_help_states_the_engines_default_iterations(capsys):
    """The help text writes the default out (the parser must not import torch); it must match the engine."""
    from ixgs_ros.engine import EngineConfig

    with pytest.raises(SystemExit):
        main(["reconstruct", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: the engine's, {EngineConfig().iterations})" in out
