"""The realistic C-arm simulator (ixgs_ros.simulation): path lengths, X-ray physics, styles, masks, scan I/O."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ixgs_ros.simulation.ct import CT
from ixgs_ros.core.scan import Scan, ScanError
from ixgs_ros.simulation.trajectories import TrajectoryConfig, make_trajectory
from ixgs_ros.core.volume import MU_WATER, Grid

pytest.importorskip("spekpy")
pytest.importorskip("xraydb")

from ixgs_ros.simulation import detector as det  # noqa: E402
from ixgs_ros.simulation.metal import Cylinder, cylinder_chords  # noqa: E402
from ixgs_ros.simulation.pathlengths import PathLengths  # noqa: E402
from ixgs_ros.simulation.processing import process  # noqa: E402
from ixgs_ros.simulation.spectra import (channel_attenuation, detector_response, linear_attenuation,  # noqa: E402
                                         reference_energy, tube_spectrum)
from ixgs_ros.simulation.styles import (HELD_OUT_STYLES, STYLES, TRAINING_STYLES, get_style,  # noqa: E402
                                        style_images, with_ranges)

ROOT = Path(__file__).resolve().parents[1]
CENTER = np.array([0.0, 0.0, 0.0])


# ================================================================================================ helpers
def _views(n=2, px=48, pixel_mm=4.0, seed=0):
    cfg = TrajectoryConfig(n_views=n, width=px, pixel_mm=pixel_mm, seed=seed).without_jitter()
    return make_trajectory(cfg, CENTER)


def _phantom_pl(views, anchors=None) -> PathLengths:
    """Analytic path lengths: a 300 x 200 mm elliptic water body with a 30 mm bone rod (rho 1.6) in the middle,
    on every view's detector (pixel radius scaled to the detector)."""
    N = len(views)
    H, W = views[0].shape
    yy, xx = np.meshgrid(np.linspace(-1, 1, H), np.linspace(-1, 1, W), indexing="ij")
    body = 230.0 * np.sqrt(np.clip(1 - (xx / 0.85) ** 2 - (yy / 0.8) ** 2, 0, None))
    rod = 30.0 * 1.6 * np.sqrt(np.clip(1 - (xx / 0.12) ** 2, 0, None)) * (np.abs(yy) < 0.7)
    soft = np.repeat((body - rod / 1.6)[None], N, 0).clip(0)
    bone = np.repeat(rod[None], N, 0)
    vert = np.repeat((rod / 1.6)[None], N, 0)
    return PathLengths(soft, bone, vert, {"anchors": anchors or []})


def _plain(style="flatpanel-raw16", **changes):
    """A style without noise, scatter, blur, shutters, screws or overlays (then ``changes``)."""
    base = dict(aec_quanta=None, electronic_noise=(0.0, 0.0), blur_mm=(0.0, 0.0), spr=(0.0, 0.0),
                scatter="none", shutter_prob=0.0, screw_levels=(0, 0), overlay_prob=0.0, glare=(0.0, 0.0),
                vignetting=(0.0, 0.0), pincushion=(0.0, 0.0), circular_field=None, heel=(0.0, 0.0),
                flat_fraction=(0.9, 0.9), offset_adu=(0.0, 0.0), unsharp_amount=(0.0, 0.0),
                unsharp2_amount=(0.0, 0.0), display_gamma=(1.0, 1.0))
    base.update(changes)
    return with_ranges(style, **base)


def _relative(img, params):
    return (img - params["offset_adu"]) / (params["flat_fraction"] * (2 ** params["adu_bits"] - 1))


# ================================================================================================ spectra
def test_reference_energy_and_material_ratios():
    e_ref = reference_energy(MU_WATER)
    assert 65.0 < e_ref < 71.0
    np.testing.assert_allclose(linear_attenuation("water", [e_ref]), MU_WATER, rtol=1e-6)
    cs, cb = channel_attenuation([30.0, e_ref, 100.0])
    np.testing.assert_allclose([cs[1], cb[1]], MU_WATER, rtol=1e-9)
    assert cb[0] / cs[0] > 2.0 and cb[2] / cs[2] < 1.0  # bone's photoelectric excess at low energy
    # ENVIRONMENT.md: cortical bone / water attenuation 4.8 at 40 keV, 2.9 at 60, 2.3 at 80
    ratio = linear_attenuation("cortical_bone", [40, 60, 80]) / linear_attenuation("water", [40, 60, 80])
    np.testing.assert_allclose(ratio, [4.8, 2.9, 2.3], rtol=0.05)


def test_screw_attenuation_magnitude():
    # a 6.5 mm screw crossed through its axis adds about 2.3 (titanium) or 6.2 (steel) to -ln(I/I0) at 60 keV
    for material, expected in (("titanium", 2.3), ("steel", 6.2)):
        cyl = Cylinder((0, 0, -20), (0, 0, 20), 3.25, material)
        chord = cylinder_chords([-100.0, 0.0, 0.0], np.array([[1.0, 0.0, 0.0]]), cyl)[0]
        np.testing.assert_allclose(chord, 6.5, rtol=1e-9)
        assert abs(chord * linear_attenuation(material, [60.0])[0] - expected) < 0.15 * expected


def test_cylinder_chords_closed_form():
    cyl = Cylinder((0, 0, 0), (0, 0, 40), 5.0, "titanium")
    o = np.array([0.0, -100.0, 10.0])
    offsets = np.array([0.0, 3.0, 4.9, 6.0])
    dirs = np.stack([np.zeros(4) + 0, np.ones(4), np.zeros(4)], -1)
    got = [cylinder_chords(o + [d, 0, 0], dirs[:1], cyl)[0] for d in offsets]
    np.testing.assert_allclose(got, 2 * np.sqrt(np.clip(25 - offsets ** 2, 0, None)), atol=1e-9)
    # along the axis: the cylinder's length; from inside the cap region at an angle: clipped by the caps
    np.testing.assert_allclose(cylinder_chords([1.0, 0, -50], np.array([[0, 0, 1.0]]), cyl), 40.0)
    d = np.array([[0.0, np.sin(0.3), np.cos(0.3)]])
    # enters through the bottom cap (z = 0), leaves through the side (y = 5)
    np.testing.assert_allclose(cylinder_chords([0.0, 0.0, -10.0], d, cyl), 5 / np.sin(0.3) - 10 / np.cos(0.3))
    np.testing.assert_allclose(cylinder_chords([0.0, 0.0, -30.0], d, cyl), 0.0, atol=1e-12)  # passes beside it


def test_beam_hardening_200mm_water():
    """80 kVp, 2.5 mm Al: -ln(I/I0) of 200 mm of water reads about 14 % below the linear model (its slope at
    zero thickness); 300 mm about 17 % (ENVIRONMENT.md)."""
    spec = tube_spectrum(80, 2.5, 0.0)
    assert 40.0 < spec.mean_energy < 46.0
    w1, w2, _ = det.spectral_weights(spec.energies, spec.fluence, detector_response(spec.energies, 0.6))
    mu = {"w": linear_attenuation("water", spec.energies)}
    slope = float(np.sum(w1 * mu["w"]))
    deficit = {}
    for t in (200.0, 300.0):
        P, P2 = det.primary({"w": np.full((1, 1), t)}, mu, w1, w2)
        deficit[t] = 1.0 - float(-np.log(P[0, 0])) / (slope * t)
        assert P2[0, 0] > P[0, 0]  # energy weighting: the second moment exceeds the mean
    assert 0.12 < deficit[200.0] < 0.17
    assert 0.15 < deficit[300.0] < 0.20 and deficit[300.0] > deficit[200.0]


def test_monochromatic_limit_reproduces_exp_minus_ideal():
    views = _views()
    pl = _phantom_pl(views)
    style = _plain(mono_kev=reference_energy(MU_WATER), csi_mm=(0.6, 0.6))
    parts = {}
    img, mask, p = style_images(pl, views, style, np.random.default_rng(0), parts=parts)
    np.testing.assert_allclose(parts["relative"], np.exp(-pl.line_integrals()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(_relative(img, p), np.exp(-pl.line_integrals()), atol=1.0 / 50000)
    assert mask.all()
    # a polychromatic beam reads lower than the monochromatic linear model behind the body (beam hardening)
    poly = _plain(kvp=(80.0, 80.0), al_mm=(2.5, 2.5), cu_mm=(0.0, 0.0))
    parts2 = {}
    style_images(pl, views, poly, np.random.default_rng(0), parts=parts2)
    assert not np.allclose(parts2["relative"], parts["relative"], rtol=1e-2)


# ================================================================================================ scatter / noise
@pytest.mark.parametrize("family", ["kernel", "asymmetric"])
def test_scatter_to_primary_ratio_is_achieved(family):
    views = _views()
    pl = _phantom_pl(views)
    parts, parts0 = {}, {}
    style = _plain(scatter=family, spr=(1.2, 1.2))
    img, _, p = style_images(pl, views, style, np.random.default_rng(3), parts=parts)
    img0, _, p0 = style_images(pl, views, _plain(scatter="none"), np.random.default_rng(3), parts=parts0)
    ideal = pl.line_integrals()
    for i in range(len(views)):
        region = det.spr_region(ideal[i])
        S, P = parts["scatter"][i], parts["primary"][i]
        spr = p["views"][i]["spr"]
        assert abs(spr - 1.2) < 0.01  # equal views, equal thickness
        np.testing.assert_allclose(S[region].mean() / P[region].mean(), spr, rtol=1e-4)
        # the image really carries it: relative intensity with scatter minus without = scatter
        diff = _relative(img[i], p) - _relative(img0[i], p0)
        np.testing.assert_allclose(diff[region].mean() / P[region].mean(), spr, rtol=2e-3)
        assert S.min() >= 0 and S.std() > 0.01 * S.mean()


def test_scatter_families_differ_in_form():
    """On a centred symmetric object the kernel family's scatter stays centred and isotropic; the asymmetric
    family's is displaced along its angle."""
    H = W = 96
    yy, xx = np.meshgrid(np.arange(H) - 47.5, np.arange(W) - 47.5, indexing="ij")
    P = np.exp(-4.0 * np.clip(1 - (xx ** 2 + yy ** 2) / 35.0 ** 2, 0, None))
    region = P < 0.9
    S1 = det.scatter_kernel(P, 1.0, region, (8.0, 20.0), 0.5)
    S2 = det.scatter_asymmetric(P, 1.0, region, 8.0, 0.4, 1.6, 0.0, 4.0, 0.1)

    def centroid(S):
        w = S - S.min()
        return float((w * xx).sum() / w.sum()), float((w * yy).sum() / w.sum())

    assert max(abs(c) for c in centroid(S1)) < 0.2
    cx, cy = centroid(S2)
    assert cx > 1.0 and abs(cy) < 0.5


def test_poisson_noise_variance_matches_the_dose():
    rng = np.random.default_rng(0)
    T = np.full((200, 200), 0.25)
    for photons in (500.0, 5000.0):
        out = det.quantum_noise(T, T, photons, rng)  # monochromatic: second moment = mean
        np.testing.assert_allclose(out.mean(), 0.25, rtol=0.01)
        np.testing.assert_allclose(out.var(), 0.25 / photons, rtol=0.05)
    # polychromatic energy weighting: variance = second moment / photons (> mean / photons)
    out = det.quantum_noise(T, T * 1.3, 2000.0, rng)
    np.testing.assert_allclose(out.var(), 0.25 * 1.3 / 2000.0, rtol=0.05)
    # through a style: the exposure control's flat-field dose sets the variance of a uniform region
    views = _views(1, 64)
    pl = PathLengths(np.full((1, 64, 64), 150.0), np.zeros((1, 64, 64)), np.zeros((1, 64, 64)))
    style = _plain(aec_quanta=(800.0, 800.0), exposure_jitter=(1.0, 1.0), mono_kev=60.0)
    parts = {}
    img, _, p = style_images(pl, views, style, np.random.default_rng(1), parts=parts)
    n0 = p["views"][0]["photons_flat"]
    rel = _relative(img[0], p)
    mean = parts["primary"][0].mean()
    np.testing.assert_allclose(mean * n0, 800.0, rtol=1e-6)
    np.testing.assert_allclose(rel.var(), mean / n0, rtol=0.08)


# ================================================================================================ masks
def test_masks_cover_shutters_saturation_and_metal():
    views = _views(2, 64, pixel_mm=3.0)
    anchor = {"name": "T8", "label": 36, "centroid": [0.0, -10.0, 0.0], "bbox": [[-30, -45, -15], [30, 25, 15]]}
    pl = _phantom_pl(views, [anchor])
    style = _plain("processed-metal", shutter_prob=1.0, shutter_frac=(0.1, 0.15), flat_fraction=(1.2, 1.2),
                   screw_levels=(1, 1), steel_prob=1.0, transfers=())  # raw counts: saturation = full scale
    parts = {}
    img, mask, p = style_images(pl, views, style, np.random.default_rng(5), parts=parts)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    assert p["screws"] and all(c["material"] == "steel" for c in p["screws"])
    full = 2 ** p["adu_bits"] - 1
    for i, v in enumerate(views):
        metal = parts["metal"][i] > 0
        assert metal.sum() > 10, "the screws must be in view"
        assert not mask[i][metal].any()
        sat = img[i] >= full
        assert sat.any() and not mask[i][sat].any()
        field, _ = det.shutter_field(v.shape, p["views"][i]["shutters"], p["views"][i]["shutter_angle_deg"],
                                     p["views"][i]["shutter_transmission"])
        shut = field < 0.5
        assert shut.any() and not mask[i][shut].any()
        assert mask[i][~(metal | sat | (field < 0.999))].mean() > 0.9  # elsewhere valid


def test_circular_field_and_overlays_are_masked():
    views = _views(2, 64)
    pl = _phantom_pl(views)
    style = _plain("ii-8bit", circular_field=(0.9, 0.9), overlay_prob=1.0, pincushion=(0.03, 0.03))
    img, mask, p = style_images(pl, views, style, np.random.default_rng(2))
    inside = det.circular_field((64, 64), 0.9)
    assert not mask[:, ~inside].any() and (img[:, ~inside] == 0).all()
    assert mask[:, inside].mean() > 0.5
    for i in range(2):
        u0, v0, w, h = p["views"][i]["overlays"][0]
        r, c = int(v0 * 64) + 1, int(u0 * 64) + 1
        assert mask[i, r, c] == 0 and img[i, r, c] == 255


# ================================================================================================ processing
@pytest.mark.parametrize("style,transfer,lut_kind,bright", [
    ("flatpanel-processed", "log", "linear", True), ("flatpanel-processed", "log", "linear", False),
    ("ii-8bit", "gamma", "linear", False), ("heldout-vendor", "log", "sigmoid", True)])
def test_processed_images_are_monotone_in_the_right_direction(style, transfer, lut_kind, bright):
    views = _views(1, 64)
    ramp = np.linspace(0.0, 300.0, 64 * 64).reshape(1, 64, 64)
    pl = PathLengths(ramp, np.zeros_like(ramp), np.zeros_like(ramp))
    st = _plain(style, transfers=(transfer,), lut=lut_kind, bone_bright_prob=1.0 if bright else 0.0,
                window_lo_pct=(0.0, 0.0), window_hi_pct=(100.0, 100.0))
    img, _, p = style_images(pl, views, st, np.random.default_rng(0))
    assert p["processing"]["bone_bright"] == bright and p["processing"]["transfer"] == transfer
    vals = img[0].ravel()  # ordered by increasing line integral
    steps = np.diff(vals)
    if bright:
        assert np.all(steps >= 0) and vals[-1] > vals[0]
    else:
        assert np.all(steps <= 0) and vals[-1] < vals[0]
    assert vals.max() <= 2 ** p["bits"] - 1 and np.all(vals == np.rint(vals))


def test_window_clipping_is_reported():
    counts = np.exp(np.linspace(2.0, 10.0, 4096)).reshape(64, 64)
    params = {"transfer": "log", "window_pct": [10.0, 90.0], "bits": 8, "bone_bright": False}
    img, clipped, info = process(counts, np.ones((64, 64), bool), params)
    assert 0.1 < clipped.mean() < 0.3 and img.min() == 0 and img.max() == 255
    assert info["window"][0] < info["window"][1]


# ================================================================================================ styles
def test_styles_catalogue_sampling_and_determinism():
    assert len(TRAINING_STYLES) >= 4 and len(HELD_OUT_STYLES) >= 1
    assert {"flatpanel-raw16", "flatpanel-processed", "ii-8bit", "processed-metal"} <= set(TRAINING_STYLES)
    assert STYLES["heldout-vendor"].scatter == "asymmetric"
    assert all(STYLES[n].scatter != "asymmetric" for n in TRAINING_STYLES)  # the second family is held out
    for s in STYLES.values():
        assert 0.2 <= s.spr[0] <= s.spr[1] <= 3.0
    views = _views(2, 32)
    pl = _phantom_pl(views)
    for name in STYLES:
        a = style_images(pl, views, name, np.random.default_rng(11))
        b = style_images(pl, views, name, np.random.default_rng(11))
        c = style_images(pl, views, name, np.random.default_rng(12))
        np.testing.assert_array_equal(a[0], b[0])
        assert a[2] == b[2] and a[2] != c[2]
        json.dumps(a[2])  # parameters are JSON-ready
        s = STYLES[name]
        p = a[2]
        assert s.kvp[0] <= p["kvp"] <= s.kvp[1] and s.spr[0] <= p["spr"] <= s.spr[1]
        assert a[0].dtype == np.float32 and a[0].max() <= 2 ** p["bits"] - 1 and a[0].min() >= 0


def test_unknown_style_names_the_valid_ones():
    with pytest.raises(ValueError) as exc:
        get_style("flatpanel")
    for name in STYLES:
        assert name in str(exc.value)
    from ixgs_ros.cli import main

    assert main(["simulate", "--out", "/nonexistent/x", "--style", "nope"]) == 2
    assert main(["simulate", "--out", "/nonexistent/x", "--crop-z", "0", "10"]) == 2


# ================================================================================================ scan mask
def test_scan_mask_roundtrip_subset_and_validation(tmp_path):
    views = _views(3, 16)
    proj = np.random.default_rng(0).uniform(100, 200, (3, 16, 16)).astype(np.float32)
    mask = np.ones((3, 16, 16), np.uint8)
    mask[1, :4] = 0
    scan = Scan(views, proj, "raw", {"style": {"style": "x"}}, mask)
    scan.save(tmp_path / "s")
    doc = json.loads((tmp_path / "s" / "scan.json").read_text())
    assert doc["mask"] == "mask.npy" and "mask" not in Scan.load(tmp_path / "s").extra
    back = Scan.load(tmp_path / "s")
    np.testing.assert_array_equal(back.mask, mask)
    assert back.mask.dtype == np.uint8 and back.image_kind == "raw"
    sub = back.subset([1, 2])
    np.testing.assert_array_equal(sub.mask, mask[[1, 2]])
    # an old scan (no mask) keeps working and has mask None; scan.json then has no "mask" key
    Scan(views, proj, "raw").save(tmp_path / "old")
    assert Scan.load(tmp_path / "old").mask is None
    assert "mask" not in json.loads((tmp_path / "old" / "scan.json").read_text())
    assert Scan(views, proj, "raw", mask=mask.astype(bool)).mask.dtype == np.uint8
    # invalid masks are rejected on load and on save
    bad = mask.copy()
    bad[0, 0, 0] = 2
    np.save(tmp_path / "s" / "mask.npy", bad)
    with pytest.raises(ScanError, match="0 or 1"):
        Scan.load(tmp_path / "s")
    np.save(tmp_path / "s" / "mask.npy", mask[:2])
    with pytest.raises(ScanError, match="shape"):
        Scan.load(tmp_path / "s")
    np.save(tmp_path / "s" / "mask.npy", mask.astype(np.float32))
    with pytest.raises(ScanError, match="uint8"):
        Scan.load(tmp_path / "s")
    (tmp_path / "s" / "mask.npy").unlink()
    with pytest.raises(ScanError, match="not found"):
        Scan.load(tmp_path / "s")
    with pytest.raises(ScanError, match="shape"):
        Scan(views, proj, "raw", {}, mask[:, :8]).save(tmp_path / "t")


# ================================================================================================ path lengths
def _synthetic_ct():
    """A 48 x 48 x 40 CT (4 mm voxels): a water cylinder (0 HU) along z with a bone rod (+600 HU, label 32)."""
    grid = Grid.centered((48, 48, 40), 4.0, CENTER)
    xyz = grid.world_coords()
    r = np.hypot(xyz[..., 0], xyz[..., 1])
    hu = np.where(r < 80, 0.0, -1000.0).astype(np.float32)
    rod = np.hypot(xyz[..., 0] - 10, xyz[..., 1] + 5) < 12
    hu[rod] = 600.0
    labels = np.where(rod, 32, 0).astype(np.int16)
    return CT(hu, grid, labels, "synthetic")


def test_path_lengths_match_line_integrals_and_cache(tmp_path, monkeypatch):
    pytest.importorskip("diffdrr")
    from ixgs_ros.simulation.drr import render_line_integrals
    from ixgs_ros.simulation import pathlengths

    ct = _synthetic_ct()
    views = _views(2, 24, pixel_mm=12.0)
    pl = pathlengths.render_path_lengths(ct, views, cache_dir=tmp_path, compile=False)
    li = render_line_integrals(ct.mu(), ct.grid, views, compile=False)
    np.testing.assert_allclose(pl.line_integrals(), li, rtol=1e-5, atol=1e-5)
    assert pl.bone.max() > 0 and pl.soft.max() > 0
    # the bone channel is the rod alone (rho 1.6), the vertebra channel its geometric length
    np.testing.assert_allclose(pl.bone, 1.6 * pl.vertebrae, rtol=1e-4, atol=1e-3)
    assert [a["name"] for a in pl.anchors] == ["T12"]
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].stem == pl.meta["key"]

    # the second call reads the cache (rendering would fail now)
    def boom(*a, **k):
        raise AssertionError("rendered although cached")

    monkeypatch.setattr("ixgs_ros.simulation.drr.DrrRenderer", boom)
    again = pathlengths.render_path_lengths(ct, views, cache_dir=tmp_path)
    np.testing.assert_array_equal(again.soft, pl.soft)
    with pytest.raises(AssertionError, match="rendered"):  # another crop is another key
        pathlengths.render_path_lengths(ct, views, z_range=(0.0, None), cache_dir=tmp_path)


def test_z_crop_excludes_anatomy_below_it():
    pytest.importorskip("diffdrr")
    from ixgs_ros.simulation.pathlengths import crop_ct_z, render_path_lengths

    ct = _synthetic_ct()
    cropped = crop_ct_z(ct, (0.0, None))
    z = ct.grid.world_coords()[..., 2]
    assert np.all(cropped.hu[z < 0] == -1000) and np.all(cropped.labels[z < 0] == 0)
    np.testing.assert_array_equal(cropped.hu[z >= 0], ct.hu[z >= 0])
    views = _views(1, 24, pixel_mm=12.0)  # source posterior, image rows toward the feet (-z)
    full = render_path_lengths(ct, views, compile=False)
    part = render_path_lengths(ct, views, z_range=(0.0, None), compile=False)
    v = views[0]
    # rays whose whole chord through the CT stays below z = 0 see nothing after the crop
    dirs = v.ray_directions()
    src = v.source
    lo, hi = ct.grid.bounds()
    t_far = np.linalg.norm(src - CENTER) + 200.0
    z_near, z_far = src[2] + 400.0 * dirs[..., 2], src[2] + t_far * dirs[..., 2]
    below = (z_near < -4.0) & (z_far < -4.0)
    above = (z_near > 4.0) & (z_far > 4.0)
    assert below.sum() > 20 and above.sum() > 20
    assert np.all(part.soft[0][below] == 0) and np.all(part.bone[0][below] == 0)
    assert np.all(part.vertebrae[0][below] == 0) and full.bone[0][below].max() > 0
    np.testing.assert_allclose(part.soft[0][above], full.soft[0][above], rtol=1e-5, atol=1e-4)
    assert part.meta["z_range"] == [0.0, None]
    with pytest.raises(ValueError, match="below"):
        crop_ct_z(ct, (10.0, 0.0))


# ================================================================================================ CLI
def test_cli_writes_a_raw_scan_consistent_with_plain_simulate(tmp_path):
    """ixgs simulate --style: a raw scan with mask.npy and ideal/ that Scan.load reads; its ideal line
    integrals are those of plain ixgs simulate (same geometry) up to float round-off."""
    pytest.importorskip("diffdrr")
    from ixgs_ros.cli import main

    common = ["--roi", "T4", "--views", "2", "--detector", "20", "--roi-size", "16", "--roi-spacing", "4",
              "--compile", "off", "--quiet", "--no-preview", "--pose-noise-deg", "0.5"]
    assert main(["simulate", "--out", str(tmp_path / "plain")] + common) == 0
    assert main(["simulate", "--out", str(tmp_path / "styled"), "--style", "processed-metal", "--style-seed",
                 "4", "--style-cache", str(tmp_path / "cache")] + common) == 0
    plain = Scan.load(tmp_path / "plain")
    styled = Scan.load(tmp_path / "styled")
    assert styled.image_kind == "raw" and styled.mask is not None and styled.mask.shape == (2, 20, 20)
    assert styled.extra["style"]["style"] == "processed-metal" and styled.extra["style"]["seed"] == 4
    assert styled.extra["style"]["screws"], "processed-metal puts screws in the ROI's vertebra"
    ideal = styled.extra["ideal"]
    li = np.load(tmp_path / "styled" / ideal["line_integrals"])
    np.testing.assert_allclose(li, plain.projections, rtol=1e-5, atol=1e-5)
    for name in ("bone", "vertebrae", "metal"):
        arr = np.load(tmp_path / "styled" / ideal[name])
        assert arr.shape == (2, 20, 20) and arr.max() > 0
    assert np.all(np.load(tmp_path / "styled" / ideal["bone"]) <= li + 1e-6)
    for a, b in zip(plain.views, styled.views):  # same (perturbed) file poses
        np.testing.assert_allclose(a.T_world_source, b.T_world_source)
    assert (tmp_path / "styled" / "gt.nii.gz").is_file()
    assert styled.projections.max() <= 2 ** styled.extra["style"]["bits"] - 1


def test_simulation_imports_without_ros():
    code = (
        "import importlib.abc, pkgutil, sys\n"
        "class B(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'rclpy' or name.startswith(('rclpy.', 'ixgs_ros.nodes', 'ixgs_ros.msg')):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, B())\n"
        "import ixgs_ros.simulation as s\n"
        "for m in pkgutil.walk_packages(s.__path__, 'ixgs_ros.simulation.'):\n"
        "    __import__(m.name)\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]
