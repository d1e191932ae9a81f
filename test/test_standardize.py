"""The standardization model (ixgs_ros.standardize): front end, network, anatomy-weighted loss, safe weights,
the training-data z guard, inference errors and the CLI commands (tiny data, seconds)."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("spekpy")
pytest.importorskip("xraydb")

from ixgs_ros.simulation.ct import CT  # noqa: E402
from ixgs_ros.core.volume import Grid  # noqa: E402
from ixgs_ros.standardize.apply import StandardizeError, Standardizer, check_image  # noqa: E402
from ixgs_ros.standardize.augment import check_training_styles, held_out_scatter_families  # noqa: E402
from ixgs_ros.standardize.data import (TRAIN_Z_MIN, DataConfig, TrainingDataError, check_training_crop,  # noqa: E402
                                       mirror_source_slices, training_ct)
from ixgs_ros.standardize.frontend import front_end, normalise  # noqa: E402
from ixgs_ros.standardize.model import ModelConfig, StandardizerNet  # noqa: E402
from ixgs_ros.standardize.train import TrainConfig, anatomy_weights, standardization_loss  # noqa: E402
from ixgs_ros.standardize.weights import WeightsError, load_model, record_path, save_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(width=4, depth=2, work=32)


# ================================================================================================ helpers
def tiny_ct() -> CT:
    """A 40 x 40 x 30 CT of 8 mm voxels (world z -250 .. -18 mm): a water cylinder with a bone rod labelled as
    a vertebra (T2), in the bundled CT's frame so that the training slab z >= -95 mm holds 10 slices."""
    I, J, K = 40, 40, 30
    A = np.diag([8.0, 8.0, 8.0, 1.0])
    A[:3, 3] = [-156.0, -211.0, -250.0]
    grid = Grid((I, J, K), A)
    c = grid.world_coords()
    r_body = np.hypot(c[..., 0], (c[..., 1] + 55.0) / 0.8)
    r_rod = np.hypot(c[..., 0], c[..., 1] + 70.0)
    hu = np.where(r_body < 130.0, 0.0, -1000.0).astype(np.float32)
    hu[r_rod < 18.0] = 700.0
    labels = np.where(r_rod < 18.0, 42, 0).astype(np.int16)  # T2
    return CT(hu, grid, labels)


def save_ct(ct: CT, folder: Path) -> tuple[Path, Path]:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(ct.hu, ct.grid.affine), str(folder / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(ct.labels, ct.grid.affine), str(folder / "labels.nii.gz"))
    return folder / "ct.nii.gz", folder / "labels.nii.gz"


def ixgs(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "ixgs_ros.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def quick_weights(tmp_path_factory):
    """Weights of `ixgs train-standardizer --quick` on the tiny CT (also the CLI test of the command)."""
    d = tmp_path_factory.mktemp("train")
    ct_path, lab_path = save_ct(tiny_ct(), d / "ct")
    out = d / "w.safetensors"
    r = ixgs("train-standardizer", "--quick", "--ct", ct_path, "--labels", lab_path, "--out", out,
             "--cache", "none", "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "wrote" in r.stdout and out.is_file() and record_path(out).is_file()
    return out


# ================================================================================================ model
def test_model_shapes_any_detector_size_and_determinism():
    torch.manual_seed(0)
    a = StandardizerNet(TINY)
    torch.manual_seed(0)
    b = StandardizerNet(TINY)
    img = torch.rand(2, 48, 40) * 4000
    for shape in ((2, 48, 40), (1, 64, 64), (1, 20, 33)):
        x = torch.rand(*shape) * 4000
        line, bone, logit = a(x)
        assert line.shape == bone.shape == logit.shape == shape
    with torch.no_grad():
        assert all(torch.equal(x, y) for x, y in zip(a(img), b(img)))
        assert all(torch.equal(x, y) for x, y in zip(a(img), a(img)))


def test_front_end_drops_gain_offset_and_flags_clipped_codes():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.uniform(100, 4000, (1, 40, 40)).astype(np.float32))
    img[0, :5, :] = 4095.0   # saturated band
    img[0, -3:, :] = 0.0     # black overlay
    x1, low, high = normalise(img)
    x2, _, _ = normalise(3.0 * img + 77.0)
    assert torch.allclose(x1, x2, atol=1e-4)   # gain and offset drop out
    assert bool(high[0, :5].all()) and bool(low[0, -3:].all()) and not bool(high[0, 10:30].any())
    basis, inputs = front_end(img)
    assert basis.shape == (1, 4, 40, 40) and inputs.shape == (1, 7, 40, 40)
    assert torch.isfinite(basis).all() and torch.isfinite(inputs).all()


def test_clipped_pixels_are_invalid_whatever_the_network_says():
    net = StandardizerNet(TINY)
    img = torch.rand(1, 40, 40) * 1000 + 10
    img[0, :4] = 5000.0
    _, _, logit = net(img)
    assert bool((logit[0, :4] < -10).all())


# ================================================================================================ loss
def _batch(H=16, W=16):
    z = torch.zeros(1, H, W)
    line = torch.full((1, H, W), 2.0)
    vert = z.clone()
    vert[0, :, :8] = 30.0   # a vertebra on the left half
    return {"line": line, "bone": line * 0.3, "vertebrae": vert, "mask": torch.ones(1, H, W)}


def test_anatomy_weighted_loss_counts_vertebra_pixels_more_and_ignores_invalid_ones():
    cfg = TrainConfig(anatomy_weight=4.0, vertebra_mm=20.0, grad_weight=0.0, mask_weight=0.0, bone_weight=0.0)
    b = _batch()
    logit = torch.full((1, 16, 16), 5.0)
    on_vert = b["line"].clone()
    on_vert[0, 4, 2] += 1.0
    off_vert = b["line"].clone()
    off_vert[0, 4, 12] += 1.0
    lv, _ = standardization_loss((on_vert, b["bone"], logit), b, cfg)
    ls, _ = standardization_loss((off_vert, b["bone"], logit), b, cfg)
    assert float(lv) == pytest.approx(5.0 * float(ls), rel=1e-5)
    w = anatomy_weights(b["vertebrae"], b["mask"] > 0, 4.0, 20.0)
    assert float(w[0, 0, 0]) == 5.0 and float(w[0, 0, 15]) == 1.0
    # an error on a pixel the mask marks invalid costs nothing
    b["mask"][0, 4, 12] = 0
    l0, _ = standardization_loss((off_vert, b["bone"], logit), b, cfg)
    assert float(l0) == 0.0
    # the mask term pushes the logit towards the simulator's mask
    cfg2 = TrainConfig(mask_weight=1.0, grad_weight=0.0)
    good, _ = standardization_loss((b["line"], b["bone"], torch.where(b["mask"] > 0, 5.0, -5.0)), b, cfg2)
    bad, _ = standardization_loss((b["line"], b["bone"], torch.where(b["mask"] > 0, -5.0, 5.0)), b, cfg2)
    assert float(good) < 0.1 < float(bad)


# ================================================================================================ weights
def test_weights_round_trip_and_refuse_pickles_archives_and_modified_files(tmp_path):
    net = StandardizerNet(TINY)
    w = tmp_path / "w.safetensors"
    rec = save_model(net, w, {"command": "test"})
    loaded, rec2 = load_model(w)
    img = torch.rand(1, 40, 40) * 1000
    with torch.no_grad():
        assert torch.equal(net.eval()(img)[0], loaded(img)[0])
    assert rec2["sha256"] == rec["sha256"] and rec2["model"] == TINY.to_dict()

    pk = tmp_path / "p.safetensors"  # a pickle under a safetensors name, with a record whose checksum matches
    pk.write_bytes(pickle.dumps({k: v.numpy() for k, v in net.state_dict().items()}))
    import hashlib
    record_path(pk).write_text(json.dumps({**rec, "sha256": hashlib.sha256(pk.read_bytes()).hexdigest()}))
    with pytest.raises(WeightsError, match="pickle"):
        load_model(pk)
    zp = tmp_path / "z.safetensors"
    torch.save(net.state_dict(), zp)
    record_path(zp).write_text(record_path(w).read_text())
    with pytest.raises(WeightsError, match="zip archive"):
        load_model(zp)

    data = bytearray(w.read_bytes())
    data[-5] ^= 0xFF  # one tensor byte changed, header intact
    w.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="checksum mismatch"):
        load_model(w)
    record_path(w).unlink()
    with pytest.raises(WeightsError, match="missing"):
        load_model(w)
    with pytest.raises(WeightsError, match="not found"):
        load_model(tmp_path / "none.safetensors")


# ================================================================================================ data guard
def test_training_crop_never_reaches_below_the_slab():
    assert check_training_crop((TRAIN_Z_MIN, None)) == (TRAIN_Z_MIN, None)
    assert check_training_crop((-50.0, None)) == (-50.0, None)
    for bad in ((-95.5, None), (None, None), (-300.0, -100.0), (None, -20.0), (float("-inf"), None)):
        with pytest.raises(TrainingDataError, match="reserved for evaluation"):
            check_training_crop(bad)
    with pytest.raises(TrainingDataError):
        DataConfig(z_min=-120.0).validate()
    with pytest.raises(TrainingDataError, match="reserved for evaluation"):
        training_ct(tiny_ct(), z_min=-100.0)


def test_training_ct_reads_no_voxel_below_the_slab():
    ct = tiny_ct()
    z = ct.grid.affine[2, 2] * np.arange(ct.grid.shape[2]) + ct.grid.affine[2, 3]
    a = training_ct(ct)
    poisoned = CT(ct.hu.copy(), ct.grid, ct.labels.copy())
    below = z < TRAIN_Z_MIN
    poisoned.hu[:, :, below] = np.random.default_rng(0).uniform(-1000, 3000, poisoned.hu[:, :, below].shape)
    poisoned.labels[:, :, below] = 25
    b = training_ct(poisoned)
    assert np.array_equal(a.hu, b.hu) and np.array_equal(a.labels, b.labels)
    src = mirror_source_slices(z, TRAIN_Z_MIN)
    assert (z[src] >= TRAIN_Z_MIN).all()
    assert np.array_equal(src[~below], np.flatnonzero(~below))
    k0 = int(np.flatnonzero(~below)[0])
    assert src[k0 - 1] == k0 and src[k0 - 2] == k0 + 1   # a reflection about the cut
    empty = training_ct(ct, mirror=False)
    assert (empty.hu[:, :, below] == -1000).all() and (empty.labels[:, :, below] == 0).all()


def test_cli_refuses_a_training_crop_below_the_slab(tmp_path):
    r = ixgs("train-standardizer", "--quick", "--z-min", "-120", "--out", tmp_path / "w.safetensors")
    assert r.returncode == 2 and "reserved for evaluation" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "w.safetensors").exists()


def test_training_styles_exclude_the_held_out_style_and_scatter_family():
    assert held_out_scatter_families() == {"asymmetric"}
    with pytest.raises(ValueError, match="held out"):
        check_training_styles(("flatpanel-raw16", "heldout-vendor"))
    from ixgs_ros.simulation.styles import with_ranges
    with pytest.raises(ValueError, match="scatter family"):
        check_training_styles((with_ranges("flatpanel-raw16", scatter="asymmetric"),))


# ================================================================================================ inference
def test_bad_images_get_a_clear_error(quick_weights):
    std = Standardizer(quick_weights)
    good = np.random.default_rng(0).uniform(100, 4000, (48, 48)).astype(np.float32)
    out = std(good)
    assert out.line.shape == out.bone.shape == out.mask.shape == (48, 48)
    assert (out.line >= 0).all() and (out.bone >= 0).all() and (out.bone <= out.line + 1e-6).all()
    nan = good.copy()
    nan[3, 3] = np.nan
    cases = [(nan, "NaN"), (np.full((48, 48), 7.0), "blank"), (np.full((48, 48), 65535, np.uint16), "saturated"),
             (np.where(np.arange(48 * 48).reshape(48, 48) < 2300, 65535.0, 0.0), "saturated"),
             (good[:20, :20], "pixels per side"), (good[None], "2D image"), (good.astype(complex), "real")]
    for img, what in cases:
        with pytest.raises(StandardizeError, match=what):
            std(img)
    with pytest.raises(StandardizeError, match="mask shape"):
        std(good, np.ones((4, 4)))
    assert check_image(good.astype(np.uint16)).dtype == np.float32


def test_cli_standardize_and_reconstruct_a_raw_scan(quick_weights, tmp_path):
    from ixgs_ros.core.scan import Scan
    from ixgs_ros.simulation.trajectories import TrajectoryConfig, make_trajectory

    views = make_trajectory(TrajectoryConfig(n_views=3, width=48, pixel_mm=4.0, seed=1).without_jitter(),
                            np.zeros(3))
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:48, 0:48]
    body = 2.5 * np.clip(1 - ((xx - 24) / 18.0) ** 2 - ((yy - 24) / 20.0) ** 2, 0, None) ** 0.5
    raw = np.stack([np.round(30000 * np.exp(-body) + rng.normal(0, 30, body.shape)) for _ in views])
    mask = np.ones(raw.shape, np.uint8)
    mask[:, :, :3] = 0
    Scan(views, raw.astype(np.float32), "raw", {"note": "kept"}, mask).save(tmp_path / "raw")
    r = ixgs("standardize", tmp_path / "raw", "--out", tmp_path / "std", "--weights", quick_weights)
    assert r.returncode == 0, r.stderr[-2000:]
    out = Scan.load(tmp_path / "std")
    bone = np.load(tmp_path / "std" / "bone.npy")
    assert out.image_kind == "line_integral" and out.projections.shape == raw.shape and bone.shape == raw.shape
    assert out.extra["bone"] == "bone.npy" and out.extra["note"] == "kept"
    assert out.extra["standardization"]["sha256"] == json.loads(record_path(quick_weights).read_text())["sha256"]
    assert (out.mask[:, :, :3] == 0).all()   # the scan's own mask is kept
    r = ixgs("standardize", tmp_path / "raw", "--out", tmp_path / "std", "--weights", quick_weights)
    assert r.returncode == 2 and "--force" in r.stderr
    r = ixgs("standardize", tmp_path / "std", "--out", tmp_path / "again", "--weights", quick_weights)
    assert r.returncode == 2 and "only raw scans" in r.stderr
    # ixgs reconstruct standardizes a raw scan by itself; --standardize on line integrals is refused
    r = ixgs("reconstruct", tmp_path / "raw", "--out", tmp_path / "rec", "--weights", quick_weights, "--size", 12,
             "--spacing", 8, "--center", 0, 0, 0, "--iterations", 1, "--no-navigation", "--quiet",
             "--config", _tiny_engine_config(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "standardizing 3 raw view(s)" in r.stderr and (tmp_path / "rec" / "volume.nii.gz").is_file()
    assert Scan.load(tmp_path / "rec" / "standardized").image_kind == "line_integral"
    r = ixgs("reconstruct", tmp_path / "std", "--out", tmp_path / "rec2", "--standardize")
    assert r.returncode == 2 and "already holds line integrals" in r.stderr


def _tiny_engine_config(tmp_path) -> Path:
    p = tmp_path / "engine.json"
    p.write_text(json.dumps({"init": {"passes": 1, "pass_views": 0}, "exterior": {"passes": 1, "refine_passes": 1,
                                                                                   "levels": 1}}))
    return p


def test_quick_training_records_the_command_and_settings(quick_weights):
    rec = json.loads(record_path(quick_weights).read_text())
    t = rec["training"]
    assert t["data"]["z_min"] == TRAIN_Z_MIN and "other vertebrae" in t["data"]["split"]
    assert t["arguments"]["quick"] is True and t["steps"] == 4 and t["train"]["seed"] == 0
    assert set(t["augment"]["styles"]).isdisjoint({"heldout-vendor"})
    model, _ = load_model(quick_weights)
    assert model.config == TINY
