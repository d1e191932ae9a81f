"""``ixgs bench``: case selection, training subsets, and the whole pipeline on a tiny configuration (output
schema, files, isolation of the method runs, scan reuse). The numbers themselves are not checked here."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("itk")
pytest.importorskip("diffdrr")
pytestmark = pytest.mark.filterwarnings("ignore:builtin type")

from ixgs_ros.evaluation import bench as B  # noqa: E402
from ixgs_ros.evaluation.bench.cases import ordered_for_engine  # noqa: E402
from ixgs_ros.pipeline import select_holdout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# a tiny configuration: 32^3 ROI at 4 mm (a 16^3 lattice of Gaussians), 64^2 detector, a few views, a short ixgs run
TINY = dict(cases=["T12-roi-only-arc160"], detector=64, roi_size=32, roi_spacing=4.0, holdout=2, iterations=20,
            engine={"lattice.cg_iterations": 10}, curve_points=4)


# ------------------------------------------------------------------------------------------ pure functions
def test_case_names_and_selection():
    names = [c.name for c in B.CASES]
    assert len(names) == len(set(names)) == 12
    assert "T12-full-body-arc160" in names and "L1-roi-only-arc90" in names
    assert [c.name for c in B.select_cases("T12-full-body-arc160")] == ["T12-full-body-arc160"]
    assert {c.name for c in B.select_cases(["T12-*"])} == {"T12-roi-only-arc160", "T12-roi-only-arc90",
                                                           "T12-full-body-arc160", "T12-full-body-arc90"}
    assert len(B.select_cases("all")) == 12
    assert [c.name for c in B.select_cases("*-arc90,t12-roi-only-arc160")][:2] == ["T12-roi-only-arc160",
                                                                                  "T12-roi-only-arc90"]
    with pytest.raises(ValueError, match="cases.*'T13-roi-only-arc160'"):
        B.select_cases("T13-roi-only-arc160")


def test_parse_views_and_methods():
    assert B.parse_views("30, 10,20,10") == [10, 20, 30]
    for bad in ("", "1", "a,3"):
        with pytest.raises(ValueError, match="views"):
            B.parse_views(bad)
    assert B.parse_methods("FDK,sart,ixgs,fdk") == ["fdk", "sart", "ixgs"]
    with pytest.raises(ValueError, match="methods.*'mlem'"):
        B.parse_methods("fdk,mlem")


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="rtk_iterations"):
        B.BenchConfig(out_dir=str(tmp_path), rtk_iterations={"ixgs": 3}).validate()
    with pytest.raises(ValueError, match="engine"):
        B.BenchConfig(out_dir=str(tmp_path), engine={"seed": 3}).validate()
    with pytest.raises(ValueError, match="rtk_spacing"):
        B.BenchConfig(out_dir=str(tmp_path), rtk_spacing=0.0).validate()
    with pytest.raises(ValueError, match="n_views_bogus|unknown engine config"):
        B.BenchConfig(out_dir=str(tmp_path), engine={"n_views_bogus": 3}).validate()
    q = B.quick_config(str(tmp_path)).validate()
    assert q.quick and q.views == [8] and q.roi_size == 64 and q.detector == 128 and "ixgs" in q.methods


def test_training_subset_is_nested_and_spread():
    rng = np.random.default_rng(1)
    primary = np.sort(rng.uniform(-80, 80, 23))[rng.permutation(23)]  # angles in scrambled order
    held = None
    for n in (5, 10, 20):
        train, h = B.training_subset(primary, n, 3, seed=0)
        assert len(train) == n and len(set(train)) == n
        assert not set(train) & set(h)
        held = h if held is None else held
        assert h == held == select_holdout(23, 3, 0)  # the same held-out views for every n
        ang = np.sort(primary[train])
        rest = np.sort(np.delete(primary, h))
        assert ang[0] == rest[0] and ang[-1] == rest[-1]  # the whole arc is covered
    with pytest.raises(ValueError, match="views"):
        B.training_subset(primary, 21, 3, seed=0)


def test_engine_order_holds_out_exactly_the_chosen_views():
    train, held = [0, 2, 3, 5, 8, 9], [1, 6]
    for seed in (0, 3):
        order, pos = ordered_for_engine(train, held, seed)
        assert sorted(order) == sorted(train + held)
        assert pos == select_holdout(len(order), 2, seed)
        assert sorted(order[k] for k in pos) == held
        assert [order[k] for k in range(len(order)) if k not in pos] == train


# ------------------------------------------------------------------------------------------ pipeline
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two view counts x FDK/SART/ixgs, in-process (one import of torch/ITK for the whole run)."""
    root = tmp_path_factory.mktemp("bench")
    cfg = B.BenchConfig(out_dir=str(root / "out"), views=[4, 5], methods=["fdk", "sart", "ixgs"], isolate=False,
                        scan_cache=str(root / "scans"), **TINY)
    lines = []
    results = B.run_bench(cfg, progress=lines.append)
    return root, cfg, results, lines


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_bench_results_schema(tiny_run):
    root, cfg, results, lines = tiny_run
    out = Path(cfg.out_dir)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema"] == B.RESULTS_SCHEMA == results["schema"]
    for key in ("date", "machine", "config", "protocol", "cases", "records", "total_s", "files"):
        assert key in on_disk, key
    m = on_disk["machine"]
    for key in ("cpu_count", "torch", "python", "platform", "date", "load_avg_start", "load_avg_end"):
        assert key in m, key
    assert isinstance(m["cpu_count"], int) and isinstance(m["torch"], str)

    (case,) = on_disk["cases"]
    assert case["name"] == "T12-roi-only-arc160" and case["mode"] == "roi-only" and case["arc_deg"] == 160
    assert case["n_views_simulated"] == 5 + 2 and case["grid"]["shape"] == [32, 32, 32]
    assert set(case["subsets"]) == {"4", "5"}
    assert case["subsets"]["4"]["holdout"] == case["subsets"]["5"]["holdout"]
    assert Path(case["scan_dir"]).is_relative_to(root / "scans") and (Path(case["scan_dir"]) / "scan.json").exists()

    recs = on_disk["records"]
    assert [(r["n_views"], r["method"]) for r in recs] == [(n, mth) for n in (4, 5) for mth in ("fdk", "sart", "ixgs")]
    for r in recs:
        assert "error" not in r, r.get("error")
        assert r["case"] == "T12-roi-only-arc160" and r["n_holdout"] == 2 and r["memory_isolated"] is False
        for key in ("wall_s", "peak_rss_mb", "rss_before_mb", "peak_rss_growth_mb", "job_s"):
            assert _number(r[key]), key
        assert r["wall_s"] > 0 and r["peak_rss_mb"] > 0 and isinstance(r["iterations"], int)
        assert 0.0 <= r["cpu_steal_pct"] <= 100.0           # this machine is Linux: /proc/stat exists
        mt = r["metrics"]
        for key in ("psnr_3d", "ssim_3d", "psnr_2d", "ssim_2d"):
            assert _number(mt[key]), key
        assert len(mt["ssim_3d_axes"]) == 3
        assert set(mt["surface"]) >= {"mean_mm", "hd95_mm", "per_vertebra"}
        assert isinstance(r["holdout_2d_source"], str)
    ixgs = [r for r in recs if r["method"] == "ixgs"]
    for r in ixgs:
        assert r["iterations"] == 20
        assert len(r["curve"]) >= 2 and r["curve"][-1]["iteration"] == 20
        assert all(_number(p["time_s"]) and _number(p["psnr_3d"]) for p in r["curve"])
        times = [p["time_s"] for p in r["curve"]]
        assert times == sorted(times) and times[-1] <= r["wall_s"] + 1e-6
        assert r["info"]["num_gaussians"] > 0
        stages = r["info"]["init_stages_s"]  # seconds per init stage, within the method's wall time
        assert any("TV-SART" in k for k in stages) and sum(stages.values()) <= r["wall_s"] + 1e-6, stages
    rtk = [r for r in recs if r["method"] in ("fdk", "sart")]
    assert all("solve_shape" in r["info"] for r in rtk)
    assert any("PSNR3D" in x for x in lines)
    (g4, g5) = on_disk["margins"]  # ixgs against the best of FDK / SART at each view count
    for g, n in ((g4, 4), (g5, 5)):
        best = max((r for r in recs if r["n_views"] == n and r["method"] != "ixgs"),
                   key=lambda r: r["metrics"]["psnr_3d"])
        mine = [r for r in recs if r["n_views"] == n and r["method"] == "ixgs"][0]
        assert g["n_views"] == n and g["best_rtk"] == best["method"]
        assert g["margin_psnr_3d"] == pytest.approx(mine["metrics"]["psnr_3d"] - best["metrics"]["psnr_3d"])
        assert g["rtk_grid_coarser_than_roi"] is False      # ROI-only: RTK solves on the ROI's own grid


def test_cpu_steal_is_the_share_of_ticks_given_to_other_guests():
    from ixgs_ros.evaluation.bench import cpu_times, steal_pct

    assert steal_pct((100, 1000), (400, 2000)) == pytest.approx(30.0)
    assert steal_pct(None, (1, 2)) is None and steal_pct((5, 10), (5, 10)) is None
    steal, total = cpu_times()
    assert 0 <= steal <= total


def test_bench_writes_report_and_plots(tiny_run):
    _, cfg, results, _ = tiny_run
    out = Path(cfg.out_dir)
    md = (out / "results.md").read_text()
    assert md.startswith("# ixgs bench results")
    assert md.count("| T12-roi-only-arc160 |") == 6 + 2   # six runs, two margins
    assert "Margins (ixgs minus the best RTK method in the table above" in md
    expected = {"plots/psnr_vs_views-T12-roi-only-arc160.png"} | {
        f"plots/{kind}-T12-roi-only-arc160-{n}v.png" for kind in ("psnr_vs_time", "montage") for n in (4, 5)}
    assert set(results["files"]) == expected
    for f in expected:
        data = (out / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert not (out / "_work").exists()


def test_bench_isolated_run_reuses_the_scan(tiny_run):
    """A method in its own process: its memory is its own, the cached scan is reused, a bad run is recorded
    and does not stop the others."""
    root, _, first, _ = tiny_run
    cfg = B.BenchConfig(out_dir=str(root / "iso"), views=[5], methods=["fdk"], isolate=True,
                        scan_cache=str(root / "scans"), surface=False, **TINY)
    res = B.run_bench(cfg)
    (case,) = res["cases"]
    assert case["scan_reused"] is True and case["scan_dir"] == first["cases"][0]["scan_dir"]
    (rec,) = res["records"]
    assert "error" not in rec, rec.get("error")
    assert rec["memory_isolated"] is True and rec["peak_rss_mb"] >= rec["rss_before_mb"] > 0
    assert "surface" not in rec["metrics"]
    same = [r for r in first["records"] if r["method"] == "fdk" and r["n_views"] == 5][0]
    assert rec["metrics"]["psnr_3d"] == pytest.approx(same["metrics"]["psnr_3d"], abs=1e-3)


def test_bench_rtk_spacing_sets_the_sart_solve_grid(tiny_run):
    """--rtk-spacing: the iterative RTK baseline solves on a grid of that voxel size (here coarser than the
    ROI's 4 mm), which changes its result; the default solves at the ROI's spacing on an ROI-only scan."""
    root, _, first, _ = tiny_run
    cfg = B.BenchConfig(out_dir=str(root / "spacing"), views=[5], methods=["sart"], isolate=False,
                        scan_cache=str(root / "scans"), surface=False, rtk_spacing=6.0,
                        baseline_from=[cfg_dir := str(root / "out")], **TINY)
    rec, *imported = B.run_bench(cfg)["records"]
    assert "error" not in rec, rec.get("error")
    # --baseline-from: the first run's RTK records at 5 views (same scan and views) join, marked; its 4-view and
    # ixgs records do not
    assert [(r["method"], r["n_views"]) for r in imported] == [("fdk", 5), ("sart", 5)]
    assert all(r["imported_from"] == str(Path(cfg_dir) / "results.json") for r in imported)
    assert "| sart (imported) |" in (root / "spacing" / "results.md").read_text()
    assert rec["info"]["solve_spacing_mm"] == pytest.approx(6.0)
    same = [r for r in first["records"] if r["method"] == "sart" and r["n_views"] == 5][0]
    assert same["info"]["solve_spacing_mm"] == pytest.approx(4.0)
    assert rec["metrics"]["psnr_3d"] != pytest.approx(same["metrics"]["psnr_3d"], abs=1e-3)
    assert "6 mm" in rec["holdout_2d_source"]


def test_cli_list_cases_and_errors(tmp_path):
    from ixgs_ros.cli import main

    assert main(["bench", "--list-cases"]) == 0
    assert main(["bench", "--out", str(tmp_path), "--cases", "nope"]) == 2
    assert main(["bench", "--out", str(tmp_path), "--views", "0"]) == 2
    assert main(["bench", "--out", str(tmp_path), "--rtk-spacing", "-1"]) == 2
    assert main(["bench", "--out", str(tmp_path), "--engine", "novalue"]) == 2
    assert main(["bench", "--out", str(tmp_path), "--baseline-from", str(tmp_path / "none.json")]) == 2
    (tmp_path / "other.json").write_text('{"schema": "something-else"}')
    assert main(["bench", "--out", str(tmp_path), "--baseline-from", str(tmp_path / "other.json")]) == 2
    assert main(["bench", "--cases", "all"]) == 2  # --out missing
    assert not (tmp_path / "results.json").exists()


def _rec(case, n, method, psnr, ssim=0.8, spacing=None, **kw):
    info = {} if spacing is None else {"solve_spacing_mm": spacing}
    return {"case": case, "n_views": n, "method": method, "iterations": 10, "info": info, "wall_s": 1.0,
            "peak_rss_mb": 100.0, "metrics": {"psnr_3d": psnr, "ssim_3d": ssim, "psnr_2d": 30.0, "ssim_2d": 0.9},
            **kw}


def test_margins_against_the_best_rtk_name_its_grid():
    """The margin is taken against the best RTK record of the same case and view count, and flags a solve grid
    coarser than the ROI's (the margin is then an upper bound)."""
    cases = [{"name": "A", "grid": {"spacing_mm": [1.0, 1.0, 1.0]}}, {"name": "B", "grid": {"spacing_mm": [2.0] * 3}}]
    recs = [_rec("A", 25, "fdk", 20.0), _rec("A", 25, "sart", 24.5, 0.7, spacing=2.75),
            _rec("A", 25, "ixgs", 29.0, 0.84), _rec("A", 10, "sart", 21.0, spacing=1.0),
            _rec("A", 10, "ixgs", 25.0), _rec("A", 50, "ixgs", 31.0),           # no RTK at 50 views: no margin
            _rec("B", 25, "sart", 30.0, spacing=2.0), _rec("B", 25, "cg", 99.0, error="failed"),
            _rec("B", 25, "ixgs", 34.0)]
    recs[7]["error"] = "RuntimeError: x"
    got = {(g["case"], g["n_views"]): g for g in B.margins(recs, cases)}
    assert set(got) == {("A", 25), ("A", 10), ("B", 25)}
    a = got[("A", 25)]
    assert a["best_rtk"] == "sart" and a["margin_psnr_3d"] == pytest.approx(4.5)
    assert a["margin_ssim_3d"] == pytest.approx(0.14) and a["rtk_grid_coarser_than_roi"] is True
    assert got[("A", 10)]["rtk_grid_coarser_than_roi"] is False
    assert got[("B", 25)]["best_rtk"] == "sart" and got[("B", 25)]["rtk_grid_coarser_than_roi"] is False
    md = B.write_markdown({"date": "d", "machine": {}, "records": recs, "margins": list(got.values()),
                           "cases": [{"name": "A", "zero_psnr_3d": 8.0}, {"name": "B", "zero_psnr_3d": 9.0}],
                           "config": {"detector": 64, "roi_size": 32, "roi_spacing": 1.0, "holdout": 2,
                                      "seed": 0, "renderer": "siddon"}})
    assert "| A | 25 | ixgs | 29.00 | sart-10 | 2.75 (coarser than the ROI) | 24.50 | +4.50 | +0.140 |" in md
    assert "upper bound" in md


def test_baseline_records_join_only_on_the_same_scan_and_views(tmp_path):
    """--baseline-from: an earlier run's RTK records on the same scan, case and training / held-out views join
    (marked as imported); another scan or subset is skipped with a message; a foreign file is refused."""
    subsets = {"25": {"train": [0, 1, 2], "holdout": [3]}, "10": {"train": [0, 2], "holdout": [3]}}
    case = {"name": "A", "scan_dir": "/x/scans/A-28v", "grid": {"spacing_mm": [1.0] * 3}, "subsets": subsets}
    mine = {"cases": [case], "records": [_rec("A", 25, "ixgs", 29.0), _rec("A", 10, "ixgs", 25.0)]}
    earlier = {"schema": B.RESULTS_SCHEMA, "cases": [{**case, "scan_dir": "/elsewhere/A-28v",
                                                       "subsets": {**subsets, "10": {"train": [1], "holdout": [3]}}}],
               "records": [_rec("A", 25, "sart", 25.3, spacing=1.0), _rec("A", 25, "ixgs", 28.0),
                           _rec("A", 10, "sart", 22.0, spacing=1.0), _rec("Z", 25, "sart", 40.0)]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(earlier))
    base = B.load_baseline(tmp_path)                      # the directory names its results.json
    msgs = []
    assert B.import_baseline_records(mine, [base], msgs.append) == 1
    (imp,) = [r for r in mine["records"] if r.get("imported_from")]
    assert imp["method"] == "sart" and imp["n_views"] == 25 and imp["imported_from"] == str(path)
    assert len(msgs) == 1 and "n=10 sart skipped" in msgs[0]
    (g,) = [g for g in B.margins(mine["records"], mine["cases"]) if g["n_views"] == 25]
    assert g["margin_psnr_3d"] == pytest.approx(29.0 - 25.3)
    other = {**earlier, "cases": [{**case, "scan_dir": "/x/scans/A-53v"}]}
    path.write_text(json.dumps(other))
    assert B.import_baseline_records(mine, [B.load_baseline(path)]) == 0
    path.write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        B.load_baseline(path)
    with pytest.raises(ValueError, match="baseline_from"):
        B.BenchConfig(out_dir=str(tmp_path / "o"), baseline_from=[str(tmp_path / "missing.json")]).validate()


@pytest.mark.slow
def test_cli_quick(tmp_path):
    """The documented quick benchmark, end to end through the console entry point (a few minutes)."""
    out = tmp_path / "quick"
    proc = subprocess.run([sys.executable, "-m", "ixgs_ros.cli", "bench", "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["quick"] is True
    assert {r["method"] for r in res["records"]} == {"fdk", "sart", "ixgs"}
    assert all("error" not in r for r in res["records"])
    assert (out / "results.md").exists() and "| T12-roi-only-arc160 | 8 | ixgs |" in proc.stdout
    assert res["command"].startswith("ixgs bench") and "--quick" in res["command"]


def test_engine_overrides_parse_json_values_and_keep_other_strings():
    from ixgs_ros.core.config import parse_overrides

    got = parse_overrides(["lr_means=5e-5", "lattice.face_layer=false", "init.tv_weight_final=null",
                           "init.solver=rtk", " iterations = 40", ""])
    assert got == {"lr_means": 5e-5, "lattice.face_layer": False, "init.tv_weight_final": None,
                   "init.solver": "rtk", "iterations": 40}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_overrides(["novalue"])


def test_roi_beyond_the_ct_is_measured_and_reported():
    """A scan whose ROI box reaches past the CT's box (the bundled CT ends at L3, the L1 cases' ROI 8 mm past it)
    is measured in mm and named in results.md; inside is 0 and not named; a scan that does not say gives None."""
    ct_affine = np.diag([1.0, 1.0, 2.0, 1.0])
    ct_affine[:3, 3] = [-50.0, -50.0, -100.0]

    def extra(offset_z):
        roi = np.eye(4)
        roi[:3, 3] = [-10.0, -10.0, offset_z]
        return {"simulation": {"ct_shape": [100, 100, 100], "ct_affine": ct_affine.tolist()},
                "roi": {"grid": {"shape": [20, 20, 20], "affine": roi.tolist()}}}

    # CT box z from -101 to 99 mm; ROI box z from offset - 0.5 to offset + 19.5
    assert B.roi_beyond_ct_mm(extra(0.0)) == 0.0
    assert B.roi_beyond_ct_mm(extra(-108.5)) == pytest.approx(8.0)
    assert B.roi_beyond_ct_mm(extra(82.5)) == pytest.approx(3.0)
    assert B.roi_beyond_ct_mm({}) is None and B.roi_beyond_ct_mm({"simulation": {}, "roi": {}}) is None
    cases = [{"name": "case-a", "zero_psnr_3d": 8.0, "roi_beyond_ct_mm": 8.0},
             {"name": "case-b", "zero_psnr_3d": 9.0, "roi_beyond_ct_mm": 0.0},
             {"name": "case-c", "zero_psnr_3d": 9.0}]
    md = B.write_markdown({"date": "d", "machine": {}, "records": [], "cases": cases,
                           "config": {"detector": 64, "roi_size": 32, "roi_spacing": 1.0, "holdout": 2,
                                      "seed": 0, "renderer": "siddon"}})
    (line,) = [ln for ln in md.splitlines() if ln.startswith("ROI beyond the CT")]
    assert line.split(":", 1)[1].split("(")[0].strip() == "case-a 8.0 mm"
    assert "ROI beyond the CT" not in B.write_markdown({"date": "d", "machine": {}, "records": [],
                                                        "cases": cases[1:], "config": {
                                                            "detector": 64, "roi_size": 32, "roi_spacing": 1.0,
                                                            "holdout": 2, "seed": 0, "renderer": "siddon"}})
