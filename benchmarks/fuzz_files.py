"""File fuzzing: mutated scan folders, import sources, NIfTI and safetensors files against ``Scan.load``,
``ixgs reconstruct``, ``ixgs import``, ``load_nifti`` and the engine/Gaussian loaders.

Each mutant must give a clear one-line error naming the problem (a ``ValueError``/``ScanError``/... for the
library; exit code 2 and one ``ixgs <cmd>: error: ...`` line on stderr, no traceback, for the CLI) and leave no
half-written output. A mutant that is still a valid input (e.g. a harmless extra key) must be accepted. The report
counts mutants per kind and outcomes: accepted, clean errors, tracebacks / unexpected exceptions, half-written
outputs.

    python benchmarks/fuzz_files.py [--n 2000] [--cli-every 10] [--seed 0] [--json out.json]

``test/test_fuzz_files.py`` runs it at a small size in ``make test``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ixgs_ros.core.geometry import View, look_at  # noqa: E402
from ixgs_ros.core.scan import Scan  # noqa: E402

# ---------------------------------------------------------------------------------------------- a valid scan


def base_scan(folder: Path, n: int = 3, size: int = 16) -> Path:
    """A small valid line-integral scan (a sphere seen from an arc) with a mask."""
    views, images = [], []
    for k in range(n):
        a = np.deg2rad(-40 + 40 * k)
        src = 400.0 * np.array([np.sin(a), -np.cos(a), 0.1])
        K = np.array([[size * 6.0, 0, (size - 1) / 2 + 0.5], [0, size * 6.0, (size - 1) / 2 - 0.5], [0, 0, 1]])
        views.append(View(K, look_at(src, (0, 0, 0), (0, 0, 1)), size, size))
        yy, xx = np.mgrid[:size, :size]
        images.append((0.6 * np.exp(-((xx - size / 2) ** 2 + (yy - size / 2) ** 2) / (size * 1.5))).astype(np.float32))
    scan = Scan(views, np.stack(images), mask=np.ones((n, size, size), np.uint8))
    return scan.save(folder)


# ---------------------------------------------------------------------------------------------- mutations
JUNK = [None, True, -1, 0, 1e308, float("nan"), float("inf"), "", "x" * 200, [], {}, [1, 2], {"a": 1},
        [[1, 2], [3, 4]], "../../etc/passwd", "/etc/passwd"]


def _json(folder: Path) -> dict:
    return json.loads((folder / "scan.json").read_text())


def _write_json(folder: Path, doc) -> None:
    (folder / "scan.json").write_text(json.dumps(doc))


def _npy_header_shape(path: Path, shape) -> None:
    """Rewrite the .npy header to declare ``shape`` (the data stays as it was)."""
    raw = path.read_bytes()
    hlen = int.from_bytes(raw[8:10], "little")
    header = raw[10:10 + hlen].decode("latin1")
    start = header.index("'shape': (")
    end = header.index(")", start)
    new = header[:start] + f"'shape': {tuple(shape)!r}" + header[end + 1:]
    new = new.rstrip("\n ").ljust(hlen - 1) + "\n"
    if len(new) != hlen:
        new = new[:hlen - 1] + "\n"
    path.write_bytes(raw[:10] + new.encode("latin1") + raw[10 + hlen:])


def mutate(folder: Path, rng: random.Random) -> str:
    """Apply one random mutation to the scan in ``folder``; returns its kind."""
    doc = _json(folder)
    proj = folder / doc["projections"]
    kind = rng.choice(["drop_key", "junk_key", "junk_view_key", "nan_matrix", "bad_matrix", "views_shape",
                       "truncate_json", "garbage_json", "truncate_npy", "npy_dtype", "npy_shape", "npy_header",
                       "npy_values", "npy_pickle", "npy_missing", "npy_dir", "path_escape", "mask_bad", "extra_key",
                       "view_size", "empty_file"])
    if kind == "drop_key":
        key = rng.choice(["format", "version", "units", "image_kind", "projections", "views"])
        doc.pop(key, None)
        _write_json(folder, doc)
    elif kind == "junk_key":
        key = rng.choice(["format", "version", "units", "image_kind", "projections", "views", "mask"])
        doc[key] = rng.choice(JUNK)
        _write_json(folder, doc)
    elif kind == "junk_view_key":
        v = rng.randrange(len(doc["views"]))
        doc["views"][v][rng.choice(["K", "T_world_source", "width", "height"])] = rng.choice(JUNK)
        _write_json(folder, doc)
    elif kind == "nan_matrix":
        v = rng.randrange(len(doc["views"]))
        key = rng.choice(["K", "T_world_source"])
        i, j = rng.randrange(3), rng.randrange(3)
        doc["views"][v][key][i][j] = rng.choice([float("nan"), float("inf"), -float("inf")])
        _write_json(folder, doc)
    elif kind == "bad_matrix":
        v = rng.randrange(len(doc["views"]))
        what = rng.choice(["singular_K", "scaled_R", "sheared_R", "K_bottom", "T_bottom"])
        if what == "singular_K":
            doc["views"][v]["K"][0][0] = 0.0
        elif what == "scaled_R":
            doc["views"][v]["T_world_source"] = (np.array(doc["views"][v]["T_world_source"]) *
                                                 np.diag([2.0, 2.0, 2.0, 1.0])).tolist()
        elif what == "sheared_R":
            doc["views"][v]["T_world_source"][0][1] += 0.3
        elif what == "K_bottom":
            doc["views"][v]["K"][2] = [0.0, 1.0, 1.0]
        else:
            doc["views"][v]["T_world_source"][3] = [0.0, 0.0, 1.0, 1.0]
        kind += ":" + what
        _write_json(folder, doc)
    elif kind == "views_shape":
        doc["views"] = rng.choice([[], doc["views"][:1], doc["views"] + doc["views"][:1], [1, 2, 3]])
        _write_json(folder, doc)
    elif kind == "truncate_json":
        text = (folder / "scan.json").read_text()
        (folder / "scan.json").write_text(text[:rng.randrange(1, len(text))])
    elif kind == "garbage_json":
        (folder / "scan.json").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))))
    elif kind == "truncate_npy":
        raw = proj.read_bytes()
        proj.write_bytes(raw[:rng.randrange(0, len(raw))])
    elif kind == "npy_dtype":
        a = np.load(proj)
        np.save(proj, a.astype(rng.choice([np.float64, np.int16, np.uint8, np.complex64])))
    elif kind == "npy_shape":
        a = np.load(proj)
        np.save(proj, rng.choice([a[:1], a[:, :5], a[..., :7], a[0], a[None], np.zeros((0, 16, 16), np.float32)]))
    elif kind == "npy_header":
        shape = rng.choice([(10 ** 9, 16, 16), (3, 10 ** 6, 10 ** 6), (3, 16), (3, 16, 16, 2), (-1, 16, 16)])
        _npy_header_shape(proj, shape)
        kind += f":{shape}"
    elif kind == "npy_values":
        a = np.load(proj)
        what = rng.choice(["nan", "inf", "zeros", "negative", "huge"])
        if what == "nan":
            a[rng.randrange(a.shape[0]), rng.randrange(a.shape[1]), rng.randrange(a.shape[2])] = np.nan
        elif what == "inf":
            a[0, 0, 0] = np.inf
        elif what == "zeros":
            a[:] = 0
        elif what == "negative":
            a -= 10.0
        else:
            a *= 1e30
        np.save(proj, a)
        kind += ":" + what
    elif kind == "npy_pickle":
        np.save(proj, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif kind == "npy_missing":
        proj.unlink()
    elif kind == "npy_dir":
        proj.unlink()
        proj.mkdir()
    elif kind == "path_escape":
        outside = folder.parent / f"outside_{rng.randrange(10 ** 9)}.npy"
        shutil.copy(proj, outside)
        what = rng.choice(["dotdot", "absolute", "symlink"])
        if what == "dotdot":
            doc["projections"] = f"../{outside.name}"
        elif what == "absolute":
            doc["projections"] = str(outside)
        else:
            (folder / "link.npy").symlink_to(outside)
            doc["projections"] = "link.npy"
        _write_json(folder, doc)
        kind += ":" + what
    elif kind == "mask_bad":
        m = np.load(folder / "mask.npy")
        np.save(folder / "mask.npy", rng.choice([m * 3, m[:1], m.astype(np.float32) + 0.5, m[..., :4]]))
    elif kind == "extra_key":  # harmless: readers keep extra keys
        doc[f"note_{rng.randrange(100)}"] = rng.choice(JUNK[:12])
        _write_json(folder, doc)
    elif kind == "view_size":
        v = rng.randrange(len(doc["views"]))
        doc["views"][v][rng.choice(["width", "height"])] = rng.choice([0, 1, 17, 10 ** 9, -3])
        _write_json(folder, doc)
    elif kind == "empty_file":
        rng.choice([folder / "scan.json", proj]).write_bytes(b"")
    return kind


# ---------------------------------------------------------------------------------------------- runners
def _one_error_line(text: str) -> bool:
    """One ``ixgs <command>: error: ...`` line (progress lines beside it are fine) and no traceback."""
    errors = [ln for ln in text.splitlines() if ln.startswith("ixgs ") and ": error: " in ln]
    return len(errors) == 1 and "Traceback" not in text


def run_library(folder: Path) -> tuple[str, str]:
    """Scan.load: ('accepted' | 'error' | 'traceback', message)."""
    try:
        Scan.load(folder)
        return "accepted", ""
    except ValueError as exc:  # ScanError is a ValueError
        msg = str(exc)
        return ("error" if msg and "\n" not in msg else "bad_message"), msg
    except Exception as exc:  # noqa: BLE001 - an unexpected exception is what fuzzing looks for
        return "traceback", f"{type(exc).__name__}: {exc}"


def run_cli(argv: list[str], out: Path) -> tuple[str, str]:
    """``ixgs`` in-process: ('ok' | 'error' | 'traceback' | 'half_written', stderr)."""
    from ixgs_ros.cli import main

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    except Exception as exc:  # noqa: BLE001
        return "traceback", f"{type(exc).__name__}: {exc}"
    text = err.getvalue()
    if rc == 0:
        return "ok", text
    if out.exists() and any(out.iterdir()):
        return "half_written", text
    if "Traceback" in text:
        return "traceback", text
    return ("error" if rc == 2 and _one_error_line(text) else "bad_message"), text


def fuzz(n: int, seed: int, cli_every: int, workdir: Path) -> dict:
    rng = random.Random(seed)
    base = workdir / "base"
    base_scan(base)
    stats: dict = {"mutants": 0, "by_kind": {}, "library": {}, "cli": {}, "failures": []}
    t0 = time.perf_counter()
    for i in range(n):
        folder = workdir / f"m{i}" / "scan"
        shutil.copytree(base, folder)
        kind = mutate(folder, rng)
        if rng.random() < 0.3:  # sometimes two mutations at once (when the first left scan.json readable)
            try:
                kind += "+" + mutate(folder, rng)
            except Exception:  # noqa: BLE001 - the first mutation left nothing the second can mutate
                pass
        stats["mutants"] += 1
        k0 = kind.split(":")[0].split("+")[0]
        stats["by_kind"][k0] = stats["by_kind"].get(k0, 0) + 1
        outcome, msg = run_library(folder)
        stats["library"][outcome] = stats["library"].get(outcome, 0) + 1
        if outcome == "accepted":
            stats.setdefault("accepted_kinds", {})[kind] = stats.setdefault("accepted_kinds", {}).get(kind, 0) + 1
        if outcome in ("traceback", "bad_message"):
            stats["failures"].append({"kind": kind, "where": "Scan.load", "outcome": outcome, "message": msg[:300]})
        # the CLI on every k-th refused mutant, and on every accepted one that is not a valid scan for the engine
        engine_refuses = outcome == "accepted" and "extra_key" not in kind
        if cli_every and (engine_refuses or (i % cli_every == 0 and outcome != "accepted")):
            out = folder.parent / "out"
            c, text = run_cli(["reconstruct", str(folder), "--out", str(out), "--quiet", "--iterations", "1"], out)
            stats["cli"][c] = stats["cli"].get(c, 0) + 1
            if c not in ("error",):
                stats["failures"].append({"kind": kind, "where": "ixgs reconstruct", "outcome": c,
                                          "message": text[-300:]})
        shutil.rmtree(folder.parent, ignore_errors=True)
    stats["files_other"] = fuzz_other_files(workdir, rng)
    stats["imports"] = fuzz_imports(workdir, rng, max(10, n // 5))
    for f in stats["files_other"]["failures"] + stats["imports"]["failures"]:
        stats["failures"].append(f)
    stats["seconds"] = time.perf_counter() - t0
    return stats


def fuzz_other_files(workdir: Path, rng: random.Random) -> dict:
    """Truncated / garbage NIfTI, safetensors (Gaussians, engine state) and import sources."""
    from ixgs_ros.core.volume import Grid, load_nifti, save_nifti
    from ixgs_ros.engine.model import GaussianModel

    out = {"cases": 0, "error": 0, "failures": []}

    def check(name, call):
        out["cases"] += 1
        try:
            call()
        except (ValueError, FileNotFoundError) as exc:
            if str(exc) and "\n" not in str(exc):
                out["error"] += 1
                return
            out["failures"].append({"kind": name, "where": "loader", "outcome": "bad_message",
                                    "message": str(exc)[:300]})
            return
        except Exception as exc:  # noqa: BLE001
            out["failures"].append({"kind": name, "where": "loader", "outcome": "traceback",
                                    "message": f"{type(exc).__name__}: {exc}"[:300]})
            return
        out["failures"].append({"kind": name, "where": "loader", "outcome": "accepted", "message": ""})

    nii = workdir / "v.nii.gz"
    save_nifti(nii, np.ones((6, 5, 4), np.float32), Grid.centered((6, 5, 4), 1.0))
    raw = nii.read_bytes()
    for cut in (0, 10, 100, len(raw) // 2, len(raw) - 3):
        bad = workdir / f"cut{cut}.nii.gz"
        bad.write_bytes(raw[:cut])
        check(f"nifti_truncated_{cut}", lambda b=bad: load_nifti(b))
    junk = workdir / "junk.nii.gz"
    junk.write_bytes(bytes(rng.randrange(256) for _ in range(500)))
    check("nifti_garbage", lambda: load_nifti(junk))
    import torch

    m = GaussianModel(torch.zeros(4, 3), torch.full((4, 3), 0.1), torch.full((4,), 0.5))
    g = m.save(workdir / "g.safetensors")
    graw = g.read_bytes()
    for cut in (0, 8, 40, len(graw) // 2, len(graw) - 5):
        bad = workdir / f"g{cut}.safetensors"
        bad.write_bytes(graw[:cut])
        check(f"gaussians_truncated_{cut}", lambda b=bad: GaussianModel.load(b))
    from ixgs_ros.core.volume import Grid as G
    from ixgs_ros.engine import ReconstructionEngine

    eng = ReconstructionEngine(G.centered(8, 2.0, (0, 0, 0)))
    st = eng.save(workdir / "state")
    tensors = next(st.glob("state-*.safetensors"))
    traw = tensors.read_bytes()
    tensors.write_bytes(traw[: len(traw) // 2])
    check("state_truncated", lambda: ReconstructionEngine.load(st))
    (st / "state.json").write_text("{")
    check("state_json_broken", lambda: ReconstructionEngine.load(st))
    return out


def _write_dicom(path: Path, pixels: np.ndarray, **attrs) -> None:
    """A small XA DICOM file; ``attrs`` override or add attributes (None deletes one)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, XRayAngiographicImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = XRayAngiographicImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality, ds.InstanceNumber = (XRayAngiographicImageStorage,
                                                                         meta.MediaStorageSOPInstanceUID, "XA", 1)
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PositionerPrimaryAngle, ds.PositionerSecondaryAngle = 30.0, -10.0
    ds.DistanceSourceToDetector, ds.DistanceSourceToPatient, ds.ImagerPixelSpacing = 1200.0, 800.0, [0.4, 0.4]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for k, v in attrs.items():
        if v is None:
            if k in ds:
                delattr(ds, k)
        else:
            setattr(ds, k, v)
    ds.save_as(str(path), enforce_file_format=True)


DICOM_ODDITIES = [
    {"PositionerPrimaryAngle": None}, {"DistanceSourceToDetector": None}, {"ImagerPixelSpacing": None},
    {"PositionerPrimaryAngle": "abc"}, {"ImagerPixelSpacing": [0.0, 0.4]}, {"ImagerPixelSpacing": [-1.0, 0.4]},
    {"DistanceSourceToDetector": 500.0}, {"DistanceSourceToDetector": 0.0}, {"Rows": 40}, {"Columns": 3},
    {"NumberOfFrames": 7}, {"BitsAllocated": 8}, {"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3},
    {"PixelData": b"\x00\x01"}, {"PositionerSecondaryAngle": float("nan")}, {"RescaleSlope": 0.0},
    {"ImagerPixelSpacing": [0.4]}, {"DistanceSourceToPatient": 2000.0},
]


def fuzz_imports(workdir: Path, rng: random.Random, n: int) -> dict:
    """``import_folder`` and ``ixgs import`` on DICOM files with odd attributes, truncated or garbage images and
    broken poses files."""
    from ixgs_ros.core.importers import import_folder

    out = {"cases": 0, "error": 0, "accepted": 0, "cli": {}, "failures": []}
    pix = (rng.random() * 1000 + np.arange(20 * 24).reshape(20, 24) % 997).astype(np.uint16)
    for i in range(n):
        src = workdir / f"imp{i}"
        src.mkdir()
        what = rng.choice(["dicom", "dicom", "png_truncated", "garbage", "poses"])
        args = []
        if what == "dicom":
            odd = rng.choice(DICOM_ODDITIES)
            what += ":" + ",".join(odd)
            try:
                _write_dicom(src / "a.dcm", pix, **odd)
            except Exception:  # pydicom itself refuses this attribute: write what it accepts
                _write_dicom(src / "a.dcm", pix)
                raw = (src / "a.dcm").read_bytes()
                (src / "a.dcm").write_bytes(raw[: rng.randrange(128, len(raw))])
                what += ",truncated"
        elif what == "png_truncated":
            import cv2

            cv2.imwrite(str(src / "a.png"), pix)
            raw = (src / "a.png").read_bytes()
            (src / "a.png").write_bytes(raw[: rng.randrange(0, len(raw))])
            args = ["--poses", str(src / "poses.json")]
            (src / "poses.json").write_text(json.dumps({"views": [{"image": "a.png", "primary_deg": 0,
                                                                   "secondary_deg": 0, "sid_mm": 1000, "sod_mm": 600,
                                                                   "pixel_spacing_mm": [0.5, 0.5]}]}))
        elif what == "garbage":
            (src / "a.dcm").write_bytes(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))))
        else:
            import cv2

            cv2.imwrite(str(src / "a.png"), pix)
            poses = rng.choice(["{", "[]", json.dumps({"views": [{"image": "b.png"}]}),
                                json.dumps({"views": [{"image": "a.png", "K": [[1, 0], [0, 1]]}]}),
                                json.dumps({"views": [{"image": "a.png", "primary_deg": "x"}]}),
                                json.dumps({"views": [{"image": "../a.png", "primary_deg": 0}]})])
            (src / "poses.json").write_text(poses)
            args = ["--poses", str(src / "poses.json")]
        out["cases"] += 1
        try:
            import_folder(src, poses=args[1] if args else None)
            out["accepted"] += 1
            out.setdefault("accepted_kinds", []).append(what)
        except ValueError as exc:
            if str(exc) and "\n" not in str(exc):
                out["error"] += 1
            else:
                out["failures"].append({"kind": what, "where": "import_folder", "outcome": "bad_message",
                                        "message": str(exc)[:300]})
        except Exception as exc:  # noqa: BLE001
            out["failures"].append({"kind": what, "where": "import_folder", "outcome": "traceback",
                                    "message": f"{type(exc).__name__}: {exc}"[:300]})
        dest = workdir / f"imp{i}_out"
        c, text = run_cli(["import", str(src), "--out", str(dest)] + args, dest)
        out["cli"][c] = out["cli"].get(c, 0) + 1
        if c in ("traceback", "bad_message", "half_written"):
            out["failures"].append({"kind": what, "where": "ixgs import", "outcome": c, "message": text[-300:]})
        shutil.rmtree(src, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="mutated scan folders")
    ap.add_argument("--cli-every", type=int, default=10, help="run ixgs reconstruct on every k-th refused mutant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the report here")
    a = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="ixgs_fuzz_") as tmp:
        stats = fuzz(a.n, a.seed, a.cli_every, Path(tmp))
    print(f"\nfile fuzzing: {stats['mutants']} mutated scan folders in {stats['seconds']:.0f} s (seed {a.seed})")
    print("| kind | mutants |\n|---|---|")
    for k, v in sorted(stats["by_kind"].items()):
        print(f"| {k} | {v} |")
    print("\n| check | outcomes |\n|---|---|")
    print(f"| Scan.load | {stats['library']} |")
    print(f"| ixgs reconstruct | {stats['cli']} |")
    o = stats["files_other"]
    print(f"| NIfTI / safetensors / state loaders | {o['cases']} cases, {o['error']} clean errors |")
    im = stats["imports"]
    print(f"| import_folder (DICOM oddities, truncated images, poses) | {im['cases']} cases, {im['error']} clean "
          f"errors, {im['accepted']} accepted ({sorted(set(im.get('accepted_kinds', [])))}) |")
    print(f"| ixgs import | {im['cli']} |")
    print(f"mutants Scan.load accepted (still valid scans): {stats.get('accepted_kinds', {})}")
    print(f"\nfailures (tracebacks, bad messages, half-written outputs): {len(stats['failures'])}")
    for f in stats["failures"][:20]:
        print(f"  {f}")
    if a.json:
        Path(a.json).write_text(json.dumps(stats, indent=1))
    return 1 if stats["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
