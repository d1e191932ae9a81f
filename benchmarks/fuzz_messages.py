"""Message fuzzing of the running live pipeline: generated malformed and adversarial messages, mixed with valid
shots, sent to xray_ingest_node (image_raw / camera_info / source_pose), standardize_node (xray_views_raw) and
reconstruction_node (xray_views), each node its own process.

Every field of Image, CameraInfo, PoseStamped and XrayView is mutated (wrong encodings and sizes, NaN/inf, zero
and huge dimensions, non-unit and zero quaternions, degenerate K, distortion / binning / ROI, zero, negative,
malformed, far-future and out-of-order stamps, duplicate ids and content, truncated data, bad i0 / distance).
Each case (one shot: the C-arm's camera_info + image + two pose samples, or one XrayView) is followed through the
pipeline: its image stamp on xray_views_raw, its view id on xray_views, the reconstruction's log of refusals and
its status. A case is *valid* (it must reach the reconstruction and be accepted), *refuse* (garbage: it must be
refused by some node, with a logged and counted reason) or *either* (plausible data no check can tell from a real
shot, e.g. byte-swapped counts or a flat field). The report counts messages per target, mutations per field,
outcomes per mutation, rejections per node and reason key (/diagnostics and ReconstructionStatus), nodes alive
at the end and their clean exit, and the RSS of each node after warm-up and at the end.

    python benchmarks/fuzz_messages.py [--messages 10000] [--rate 150] [--seed 0] [--json PATH]

``test/test_fuzz_messages.py`` runs it at a small size in ``make test`` and at full size in the slow suite.
"""
from __future__ import annotations

import argparse
import ast
import json
import math
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ros_harness import NodeProcess, Probe, print_table, rejected_counts, ros_env  # noqa: E402

I0 = 30000.0
SIZE = 32
NS = "/ixgs_fuzz"
TARGETS = ("ingest", "standardize", "reconstruction")
NODE_NAMES = {"ingest": "xray_ingest_node", "standardize": "standardize_node", "reconstruction": "reconstruction_node"}


# ------------------------------------------------------------------------------------------------ valid shots
class Pool:
    """Views of a sphere on a tilted arc; every shot gets its own noise, so no two shots share content."""

    def __init__(self, n: int = 24, seed: int = 0):
        from ixgs_ros.simulation.phantom import Ellipsoid, arc_views, project

        rng = np.random.default_rng(seed)
        self.views = arc_views(n, SIZE, 350.0, seed=rng)  # the shots' noise continues from the same generator
        self.lines = project([Ellipsoid((0.0, 0.0, 0.0), (12.0,) * 3, mu=0.04)], self.views).astype(np.float32)
        self.rng = rng

    def shot(self, k: int):
        """(view, line integrals float32, detector counts uint16), unique content."""
        view = self.views[k % len(self.views)]
        line = self.lines[k % len(self.views)] + self.rng.uniform(0, 1e-3, (SIZE, SIZE)).astype(np.float32)
        counts = np.round(I0 * np.exp(-line)) + self.rng.integers(-40, 41, (SIZE, SIZE))
        return view, line, np.clip(counts, 1, 65534).astype(np.uint16)


@dataclass
class Case:
    target: str
    field: str
    mutation: str
    expect: str                       # valid | refuse | either
    messages: list = field(default_factory=list)   # (topic, msg)
    key: object = None                # ingest: the image stamp (sec, nanosec); else the view_id
    fate: str = ""


# ------------------------------------------------------------------------------------------------ mutations
BIG = 2 ** 32 - 1


def _image_mutations(line_integral: bool):
    """(field, mutation, expect, fn(Image)) for an image of 32FC1 line integrals or 16UC1 counts."""
    def set_(attr, value):
        return lambda m: setattr(m, attr, value)

    def data(fn):
        def apply(m):
            m.data = fn(bytes(m.data))
        return apply

    def pixels(values):
        def apply(m):
            dt = np.float32 if line_integral else np.uint16
            a = np.frombuffer(bytes(m.data), dt).reshape(m.height, m.width)
            m.data = np.ascontiguousarray(values(a)).astype(dt).tobytes()
        return apply

    own = "32FC1" if line_integral else "16UC1"
    enc = [("rgb8", "refuse"), ("bgr8", "refuse"), ("", "refuse"), ("yuv422", "refuse"), ("bayer_rggb8", "refuse"),
           ("mono8", "refuse"), ("8UC1", "refuse"), ("64FC1", "refuse"), ("32FC1" if not line_integral else "16UC1",
                                                                            "refuse"),
           ("32SC1" if line_integral else "16SC1", "refuse" if line_integral else "either"),
           ("mono16" if not line_integral else "32FC1", "valid"), ("\x00garbage\xff", "refuse")]
    out = [("Image.encoding", repr(e), x, set_("encoding", e)) for e, x in enc]
    out += [("Image.height", str(v), "refuse", set_("height", v)) for v in (0, 1, SIZE - 1, SIZE + 1, BIG)]
    out += [("Image.width", str(v), "refuse", set_("width", v)) for v in (0, SIZE // 2, SIZE - 1, SIZE + 1, BIG)]
    row = SIZE * 4 if line_integral else SIZE * 2
    out += [("Image.step", str(v), "refuse", set_("step", v)) for v in (0, row - 1, row + 8, 2 * row, BIG)]
    out += [("Image.is_bigendian", str(v), "either", set_("is_bigendian", v)) for v in (1, 255)]
    out += [("Image.data", "truncated_half", "refuse", data(lambda b: b[: len(b) // 2])),
            ("Image.data", "empty", "refuse", data(lambda b: b"")),
            ("Image.data", "one_byte_short", "refuse", data(lambda b: b[:-1])),
            ("Image.data", "trailing_bytes", "valid", data(lambda b: b + b"\x00" * 17))]
    if line_integral:
        out += [("Image.pixels", "nan", "refuse", pixels(lambda a: np.where(a > 0.1, np.nan, a))),
                ("Image.pixels", "inf", "refuse", pixels(lambda a: np.where(a > 0.1, np.inf, a))),
                ("Image.pixels", "zeros", "refuse", pixels(lambda a: np.zeros_like(a))),
                ("Image.pixels", "negative", "refuse", pixels(lambda a: -1.0 - a)),
                ("Image.pixels", "huge", "refuse", pixels(lambda a: a * 1e30)),
                ("Image.pixels", "counts_as_float", "refuse", pixels(lambda a: I0 * np.exp(-a)))]
    else:
        out += [("Image.pixels", "saturated", "refuse", pixels(lambda a: np.full_like(a, 65535))),
                ("Image.pixels", "40pc_saturated", "refuse",
                 pixels(lambda a: np.where(np.arange(a.size).reshape(a.shape) < 0.4 * a.size, 65535, a))),
                ("Image.pixels", "zeros", "refuse", pixels(lambda a: np.zeros_like(a))),
                ("Image.pixels", "flat_field", "either", pixels(lambda a: np.full_like(a, int(I0)))),
                ("Image.pixels", "noise", "either",
                 pixels(lambda a: np.random.default_rng(int(a.sum()) % 2 ** 31).integers(0, 65535, a.shape)))]
    out += [("Image.header.frame_id", "junk", "valid", lambda m: setattr(m.header, "frame_id", "junk \u2713")),
            ("Image.header.frame_id", "empty", "valid", lambda m: setattr(m.header, "frame_id", ""))]
    return out


def _camera_info_mutations():
    def k(i, v):
        def apply(m):
            kk = list(m.k)
            kk[i] = v
            m.k = kk
        return apply

    def set_(attr, value):
        return lambda m: setattr(m, attr, value)

    out = [("CameraInfo.k", f"k{i}={v}", "refuse", k(i, v))
           for i, v in ((0, float("nan")), (4, float("inf")), (2, float("nan")), (0, -350.0), (4, 0.0), (8, 0.0),
                        (6, 0.5), (3, 20.0), (7, float("-inf")))]
    out += [("CameraInfo.k", "zeros", "refuse", set_("k", [0.0] * 9)),
            ("CameraInfo.k", "skew", "either", k(1, 5.0)),
            ("CameraInfo.k", "fx=1e9", "either", k(0, 1e9))]
    out += [("CameraInfo.width", str(v), "refuse", set_("width", v)) for v in (0, SIZE - 1, BIG)]
    out += [("CameraInfo.height", str(v), "refuse", set_("height", v)) for v in (0, SIZE + 1, BIG)]
    out += [("CameraInfo.d", "distortion", "refuse", lambda m: (setattr(m, "distortion_model", "plumb_bob"),
                                                                 setattr(m, "d", [0.1, -0.02, 0.0, 0.0, 0.0]))),
            ("CameraInfo.d", "nan", "refuse", lambda m: setattr(m, "d", [float("nan")])),
            ("CameraInfo.d", "zeros", "valid", lambda m: (setattr(m, "distortion_model", "plumb_bob"),
                                                          setattr(m, "d", [0.0] * 5))),
            ("CameraInfo.distortion_model", "rational_polynomial", "valid",
             set_("distortion_model", "rational_polynomial")),
            ("CameraInfo.r", "zeros", "either", set_("r", [0.0] * 9)),
            ("CameraInfo.p", "nan", "either", set_("p", [float("nan")] * 12)),
            ("CameraInfo.binning_x", "2", "refuse", set_("binning_x", 2)),
            ("CameraInfo.binning_y", "4", "refuse", set_("binning_y", 4)),
            ("CameraInfo.roi", "crop", "refuse", lambda m: (setattr(m.roi, "x_offset", 5), setattr(m.roi, "width", 10),
                                                           setattr(m.roi, "height", 10))),
            ("CameraInfo.roi", "full", "valid", lambda m: (setattr(m.roi, "width", SIZE), setattr(m.roi, "height", SIZE))),
            ("CameraInfo.header.frame_id", "junk", "valid", lambda m: setattr(m.header, "frame_id", "junk"))]
    return out


def _pose_mutations(prefix: str):
    """(field, mutation, expect, fn(Pose)) for a geometry_msgs/Pose."""
    def pos(axis, v):
        return lambda p: setattr(p.position, axis, v)

    def quat(fn):
        def apply(p):
            o = p.orientation
            o.x, o.y, o.z, o.w = fn((o.x, o.y, o.z, o.w))
        return apply

    out = [(f"{prefix}.position.{a}", repr(v), x, pos(a, v))
           for a in "xyz" for v, x in ((float("nan"), "refuse"), (float("inf"), "refuse"), (1e6, "either"))]
    out += [(f"{prefix}.orientation", "zero", "refuse", quat(lambda q: (0.0, 0.0, 0.0, 0.0))),
            (f"{prefix}.orientation", "norm2", "refuse", quat(lambda q: tuple(2.0 * v for v in q))),
            (f"{prefix}.orientation", "norm1.3", "refuse", quat(lambda q: tuple(1.3 * v for v in q))),
            (f"{prefix}.orientation", "norm0.5", "refuse", quat(lambda q: tuple(0.5 * v for v in q))),
            (f"{prefix}.orientation", "nan", "refuse", quat(lambda q: (q[0], q[1], q[2], float("nan")))),
            (f"{prefix}.orientation", "inf", "refuse", quat(lambda q: (float("inf"), q[1], q[2], q[3]))),
            (f"{prefix}.orientation", "norm1+5e-4", "valid", quat(lambda q: tuple((1 + 5e-4) * v for v in q))),
            (f"{prefix}.orientation", "other_rotation", "either", quat(lambda q: (q[3], q[2], q[1], q[0])))]
    return out


def _stamp_mutations(prefix: str, now: float):
    def stamp(sec, nanosec=0):
        def apply(h):
            h.stamp.sec, h.stamp.nanosec = int(sec), int(nanosec)
        return apply

    return [(f"{prefix}.stamp", "zero", "refuse", stamp(0)),
            (f"{prefix}.stamp", "future_1h", "refuse", stamp(now + 3600)),
            (f"{prefix}.stamp", "future_1y", "refuse", stamp(2 ** 31 - 1)),
            (f"{prefix}.stamp", "negative", "refuse", stamp(-5)),
            (f"{prefix}.stamp", "nanosec_2e9", "refuse", stamp(now - 100, 2_000_000_000))]


# ------------------------------------------------------------------------------------------------ cases
class Generator:
    """Builds cases with unique stamps (ingest: 0.5 s apart in stamp time, far from each other's skew) and ids."""

    def __init__(self, pool: Pool, seed: int):
        import random

        self.pool = pool
        self.rng = random.Random(seed)
        self.now = time.time()
        self.t0 = self.now - 3000.0          # stamps in the past, well within max_future_s
        self.k_ingest = 0
        self.k_view = 0
        self.valid_ingest: list[Case] = []
        self.valid_views: dict[str, list] = {"standardize": [], "reconstruction": []}
        self.image_mut = {False: _image_mutations(False), True: _image_mutations(True)}
        self.info_mut = _camera_info_mutations()
        self.pose_mut = _pose_mutations("Pose")
        self.stamps = {p: _stamp_mutations(p, self.now) for p in ("Image.header", "CameraInfo.header",
                                                                  "PoseStamped.header", "XrayView.header")}

    # -- ingest: one shot = camera_info + image + two pose samples
    def _shot_messages(self, view, counts, t):
        from geometry_msgs.msg import PoseStamped

        from ixgs_ros.nodes import convert as cv

        header = cv.make_header("xray_source_optical", t)
        info = cv.view_to_camera_info(view, header)
        img = cv.array_to_image(counts, header=cv.make_header("xray_source_optical", t))
        poses = []
        for dt in (0.0, 0.004):
            m = PoseStamped()
            m.header = cv.make_header("world", t + dt)
            m.pose = cv.matrix_to_pose(view.T_world_source)
            poses.append(m)
        return info, img, poses

    def ingest_case(self, valid: bool) -> Case:
        k = self.k_ingest
        self.k_ingest += 1
        t = self.t0 + 0.5 * k
        if not valid and self.valid_ingest and self.rng.random() < 0.04:   # a valid shot sent again as it was
            old = self.rng.choice(self.valid_ingest)
            return Case("ingest", "shot", "duplicate_shot", "refuse", list(old.messages), old.key)
        if not valid and self.rng.random() < 0.04:                         # a valid shot stamped between older ones
            t = self.t0 + 0.5 * max(0, k - self.rng.randint(1, 10)) + 0.25
            view, _, counts = self.pool.shot(k)
            info, img, poses = self._shot_messages(view, counts, t)
            case = Case("ingest", "shot", "out_of_order", "valid")
        else:
            view, _, counts = self.pool.shot(k)
            info, img, poses = self._shot_messages(view, counts, t)
            case = Case("ingest", "shot", "valid", "valid")
            if not valid:
                which = self.rng.choice(["Image", "CameraInfo", "PoseStamped"])
                if which == "Image":
                    f, mname, expect, fn = self.rng.choice(self.image_mut[False] + self.stamps["Image.header"]
                                                           + [("Image.header.stamp", "no_pose_near", "refuse", None)])
                    if mname == "no_pose_near":  # between later shots, 0.25 s from any pose: never paired
                        ns = img.header.stamp.nanosec + 250_000_000
                        img.header.stamp.sec += 7 + ns // 1_000_000_000
                        img.header.stamp.nanosec = ns % 1_000_000_000
                    else:
                        fn(img.header if f.endswith(".stamp") else img)
                elif which == "CameraInfo":
                    f, mname, expect, fn = self.rng.choice(self.info_mut + self.stamps["CameraInfo.header"])
                    fn(info.header if f.endswith(".stamp") else info)
                else:
                    f, mname, expect, fn = self.rng.choice(
                        [(f"PoseStamped.pose{x[0][4:]}", *x[1:]) for x in self.pose_mut] + self.stamps["PoseStamped.header"]
                        + [("PoseStamped.header.frame_id", "tracker", "refuse", None),
                           ("PoseStamped.header.frame_id", "empty", "valid", None)])
                    for p in poses:
                        if f.endswith(".stamp"):
                            fn(p.header)
                        elif f.endswith("frame_id"):
                            p.header.frame_id = "tracker" if mname == "tracker" else ""
                        else:
                            fn(p.pose)
                case = Case("ingest", f, mname, expect)
        case.messages = [("camera_info", info), ("image_raw", img)] + [("source_pose", p) for p in poses]
        case.key = (img.header.stamp.sec, img.header.stamp.nanosec)
        if case.expect == "valid" and case.mutation == "valid":
            self.valid_ingest.append(case)
        return case

    # -- standardize (raw counts) and reconstruction (line integrals): one XrayView
    def view_case(self, target: str, valid: bool) -> Case:
        from ixgs_ros.msg import XrayView
        from ixgs_ros.nodes import convert as cv

        k = self.k_view
        self.k_view += 1
        li = target == "reconstruction"
        vid = f"{target[:3]}_{k:06d}"
        view, line, counts = self.pool.shot(10_000 + k)
        kind = XrayView.IMAGE_KIND_LINE_INTEGRAL if li else XrayView.IMAGE_KIND_RAW
        t = self.now - 60.0 + 1e-3 * k
        msg = cv.view_to_xray_view(view, line if li else counts, image_kind=kind, view_id=vid, frame_id="world",
                                   stamp=t, i0=0.0 if li else I0)
        case = Case(target, "view", "valid", "valid")
        valids = self.valid_views[target]
        if not valid:
            choices = (
                [(f"XrayView.image{f[5:]}", m, x, (lambda fn: lambda v: fn(v.image))(fn)) for f, m, x, fn in
                 self.image_mut[li]]
                + [(f"XrayView.camera_info{f[10:]}", m, x, (lambda fn: lambda v: fn(v.camera_info))(fn))
                   for f, m, x, fn in self.info_mut]
                + [("XrayView.camera_info.width", "mismatch", "refuse",
                    lambda v: setattr(v.camera_info, "width", SIZE + 8))]
                + [(f"XrayView.source_pose{f[4:]}", m, x, (lambda fn: lambda v: fn(v.source_pose))(fn))
                   for f, m, x, fn in self.pose_mut]
                + [(f, m, x, (lambda fn: lambda v: fn(v.header))(fn)) for f, m, x, fn in self.stamps["XrayView.header"]]
                + [("XrayView.header.stamp", "far_past", "valid", lambda v: setattr(v.header.stamp, "sec", 1000)),
                   ("XrayView.header.frame_id", "map", "refuse", lambda v: setattr(v.header, "frame_id", "map")),
                   ("XrayView.header.frame_id", "empty", "refuse", lambda v: setattr(v.header, "frame_id", "")),
                   ("XrayView.image_kind", "2", "refuse", lambda v: setattr(v, "image_kind", 2)),
                   ("XrayView.image_kind", "255", "refuse", lambda v: setattr(v, "image_kind", 255)),
                   ("XrayView.image_kind", "swapped", "refuse",
                    lambda v: setattr(v, "image_kind", 1 - v.image_kind)),
                   ("XrayView.view_id", "empty", "refuse", lambda v: setattr(v, "view_id", "")),
                   ("XrayView.view_id", "300_chars", "refuse", lambda v: setattr(v, "view_id", v.view_id + "x" * 300)),
                   ("XrayView.view_id", "newline", "refuse",
                    lambda v: setattr(v, "view_id", v.view_id + "\n[ERROR] forged")),
                   ("XrayView.view_id", "unicode", "valid", lambda v: setattr(v, "view_id", v.view_id + "_\u00df\u2713")),
                   ("XrayView.source_detector_distance_mm", "nan", "refuse",
                    lambda v: setattr(v, "source_detector_distance_mm", float("nan"))),
                   ("XrayView.source_detector_distance_mm", "-1", "refuse",
                    lambda v: setattr(v, "source_detector_distance_mm", -1.0)),
                   ("XrayView.source_detector_distance_mm", "inf", "refuse",
                    lambda v: setattr(v, "source_detector_distance_mm", float("inf"))),
                   ("XrayView.source_detector_distance_mm", "1000", "valid",
                    lambda v: setattr(v, "source_detector_distance_mm", 1000.0)),
                   ("XrayView.i0", "nan", "refuse", lambda v: setattr(v, "i0", float("nan"))),
                   ("XrayView.i0", "-1", "refuse", lambda v: setattr(v, "i0", -1.0)),
                   ("XrayView.i0", "inf", "refuse", lambda v: setattr(v, "i0", float("inf"))),
                   ("XrayView.i0", "1.0", "refuse" if not li else "valid", lambda v: setattr(v, "i0", 1.0))])
            if valids:
                choices += [("XrayView.view_id", "duplicate_id", "refuse", None),
                            ("XrayView.content", "duplicate_content", "refuse", None)]
            f, mname, expect, fn = self.rng.choice(choices)
            if mname == "duplicate_id":
                msg.view_id = self.rng.choice(valids).key
            elif mname == "duplicate_content":
                old = self.rng.choice(valids).messages[0][1]
                msg = XrayView(header=old.header, image=old.image, camera_info=old.camera_info,
                               source_pose=old.source_pose, image_kind=old.image_kind, view_id=vid,
                               source_detector_distance_mm=old.source_detector_distance_mm, i0=old.i0)
            else:
                fn(msg)
            if mname == "swapped" and not li:
                expect = "refuse"  # uint16 counts labelled as line integrals: encoding
            case = Case(target, f, mname, expect)
        case.messages = [("xray_views_raw" if not li else "xray_views", msg)]
        case.key = msg.view_id
        if case.mutation == "valid":
            valids.append(case)
        return case

    def cases(self, n_messages: int, valid_fraction: float = 0.3, weights=(0.45, 0.25, 0.30)) -> list[Case]:
        out, n = [], 0
        while n < n_messages:
            target = self.rng.choices(TARGETS, weights)[0]
            valid = self.rng.random() < valid_fraction
            case = self.ingest_case(valid) if target == "ingest" else self.view_case(target, valid)
            out.append(case)
            n += len(case.messages)
        return out


# ------------------------------------------------------------------------------------------------ run
_REJECTED_VIEW = re.compile(r"rejected view ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")
_DROPPED_VIEW = re.compile(r"dropped view ('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")")


def _ids(pattern, text: str) -> Counter:
    out = Counter()
    for m in pattern.finditer(text):
        try:
            out[str(ast.literal_eval(m.group(1)))[:40]] += 1
        except (ValueError, SyntaxError):
            pass
    return out


def start_pipeline(workdir: Path, env: dict, method: str = "log") -> dict[str, NodeProcess]:
    ns = ["-r", f"__ns:={NS}"]
    nodes = {
        "ingest": NodeProcess("ingest", ns + ["-p", f"record_dir:={workdir / 'record'}", "-p", "max_wait_s:=1.0"],
                              env, workdir / "ingest.log"),
        "standardize": NodeProcess("standardize", ns + ["-p", f"method:={method}", "-p", "i0:=0.0"], env,
                                   workdir / "standardize.log"),
        "reconstruction": NodeProcess("reconstruction", ns + [
            "-p", "min_views:=1000000", "-p", "volume_size:=[16,16,16]", "-p", "voxel_size_mm:=2.5",
            "-p", "status_rate_hz:=5.0", "-p", "outputs:=['']", "-p", "device:=cpu"], env,
            workdir / "reconstruction.log"),
    }
    for n in nodes.values():
        n.start()
    return nodes


def fuzz(n_messages: int = 300, seed: int = 0, rate: float = 150.0, workdir: Path | None = None,
         method: str = "log", log=print) -> dict:
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from ixgs_ros.msg import ReconstructionStatus, XrayView

    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="ixgs_fuzz_msgs_")
        workdir = Path(tmp.name)
    workdir = Path(workdir)
    env = ros_env(workdir)
    t_start = time.monotonic()
    gen = Generator(Pool(seed=seed), seed)
    warm = [gen.ingest_case(True) for _ in range(4)] + [gen.view_case(t, True) for t in TARGETS[1:] for _ in range(4)]
    cases = warm + gen.cases(n_messages - sum(len(c.messages) for c in warm))
    nodes = start_pipeline(workdir, env, method)
    probe = Probe()
    report: dict = {}
    try:
        node = probe.node
        qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        pubs = {"image_raw": node.create_publisher(Image, f"{NS}/image_raw", qos),
                "camera_info": node.create_publisher(CameraInfo, f"{NS}/camera_info", qos),
                "source_pose": node.create_publisher(PoseStamped, f"{NS}/source_pose", qos),
                "xray_views_raw": node.create_publisher(XrayView, f"{NS}/xray_views_raw", qos),
                "xray_views": node.create_publisher(XrayView, f"{NS}/xray_views", qos)}
        raw_out: dict[tuple, list[str]] = defaultdict(list)
        std_out: Counter = Counter()
        status: list = []
        node.create_subscription(XrayView, f"{NS}/xray_views_raw", lambda m: raw_out[
            (m.header.stamp.sec, m.header.stamp.nanosec)].append(m.view_id) if m.view_id.startswith("shot_") else None,
                                 qos)
        node.create_subscription(XrayView, f"{NS}/xray_views", lambda m: std_out.update([m.view_id[:40]]), qos)
        node.create_subscription(ReconstructionStatus, f"{NS}/reconstruction_status",
                                 lambda m: status.__setitem__(slice(None), [m]), 10)
        up = probe.spin_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()) and status
                              and all(probe.diag(n) for n in ("xray_ingest_node", "standardize_node")), 120.0)
        if not up:
            raise RuntimeError("the nodes did not come up: " + "; ".join(
                f"{k}: {n.log()[-500:]}" for k, n in nodes.items()))
        probe.spin_for(2.0)
        log(f"nodes up after {time.monotonic() - t_start:.1f} s; {len(cases)} cases, "
            f"{sum(len(c.messages) for c in cases)} messages")
        sent = Counter()
        n_direct = 0

        images_sent = 0

        def backlog_ok():
            """Flow control: the fuzzer tests content, not flooding. Each node's reader keeps the last 100
            messages (SHOT_QUEUE_DEPTH); a node starved of CPU (this machine is shared) would lose the oldest."""
            d = probe.diag("xray_ingest_node")
            recon_lag = n_direct + int(probe.diag("standardize_node").get("published", 0)) - recon_seen()
            return images_sent - int(d.get("frames.received", 0)) < 40 and recon_lag < 40

        def send(batch):
            nonlocal n_direct, images_sent
            period = 1.0 / rate
            next_t = time.monotonic()
            for case in batch:
                if not backlog_ok():
                    probe.spin_until(backlog_ok, 120.0)
                    next_t = time.monotonic()
                n_direct += case.target == "reconstruction"
                images_sent += case.target == "ingest"
                for topic, msg in case.messages:
                    pubs[topic].publish(msg)
                    sent[topic] += 1
                    next_t += period
                    while time.monotonic() < next_t:
                        probe.executor.spin_once(timeout_sec=max(0.0, min(0.005, next_t - time.monotonic())))

        def recon_seen():
            st = status[-1] if status else None
            return (st.views_used + st.views_rejected) if st else -1

        def settle(timeout):
            """Until ingest has no image waiting and the reconstruction counted every view sent to it."""
            def done():
                d = probe.diag("xray_ingest_node")
                return (d.get("waiting_images") == "0"
                        and recon_seen() >= n_direct + int(probe.diag("standardize_node").get("published", 0)))
            probe.spin_until(done, timeout)
            last, stable_since, t0 = None, time.monotonic(), time.monotonic()
            while time.monotonic() - stable_since < 4.0 and time.monotonic() - t0 < timeout:
                probe.spin_for(0.5)
                state = (recon_seen(), sum(std_out.values()), sum(len(v) for v in raw_out.values()),
                         probe.diag("xray_ingest_node").get("published"))
                if state != last:
                    last, stable_since = state, time.monotonic()

        send(warm)  # valid shots first: every node has run its whole path once before memory is read
        settle(120.0)
        rss = {k: {"start": round(n.rss_mb(), 1)} for k, n in nodes.items()}
        t_send = time.monotonic()
        rest = cases[len(warm):]
        send(rest[: len(rest) // 2])
        for k, n in nodes.items():
            rss[k]["mid"] = round(n.rss_mb(), 1)
        send(rest[len(rest) // 2:])
        send_s = time.monotonic() - t_send
        settle(120.0 + n_messages / 20.0)
        for k, n in nodes.items():
            rss[k].update(end=round(n.rss_mb(), 1), peak=round(n.peak_rss_mb(), 1))
        alive = {k: n.alive() for k, n in nodes.items()}
        diags = {k: rejected_counts(probe.diag(NODE_NAMES[k])) for k in ("ingest", "standardize")}
        st = status[-1]
        diags["reconstruction"] = dict(zip(st.rejected_reasons, map(int, st.rejected_counts)))
        views_used, views_rejected = int(st.views_used), int(st.views_rejected)
        ingest_diag = probe.diag("xray_ingest_node")
    finally:
        probe.close()
        codes = {k: n.stop() for k, n in nodes.items()}
    logs = {k: n.log() for k, n in nodes.items()}

    # ---- the fate of every case
    recon_refused = _ids(_REJECTED_VIEW, logs["reconstruction"])
    std_dropped = _ids(_DROPPED_VIEW, logs["standardize"])
    empty_refused = logs["reconstruction"].count("rejected view (no view_id)")
    by_id: dict[str, list[Case]] = defaultdict(list)   # cases reaching the reconstruction, by id[:40], in order
    reached: list[tuple[str, Case]] = []
    raw_iter = {k: list(v) for k, v in raw_out.items()}
    if any(k.startswith("rec_") for k in std_out):  # the probe hears its own xray_views: not standardize's
        for c in cases:
            if c.target == "reconstruction":
                std_out[c.key[:40]] -= 1
    for c in cases:
        if c.target == "ingest":
            ids = raw_iter.get(c.key)
            if not ids:
                c.fate = "refused:ingest"
                continue
            vid = ids.pop(0)
            if std_out[vid[:40]] == 0:
                c.fate = "refused:standardize"
                continue
        else:
            vid = c.key
            if c.target == "standardize" and std_out[vid[:40]] == 0:
                c.fate = "refused:standardize"
                continue
            if c.target == "standardize":
                std_out[vid[:40]] -= 1
        reached.append((vid, c))
        by_id[vid[:40]].append(c)
    for c_id, cs in by_id.items():
        if c_id == "":
            n_ref = empty_refused
        else:
            n_ref = recon_refused.get(c_id, 0)
        for j, c in enumerate(cs):  # the later cases of an id are the refused ones (duplicates come after)
            c.fate = "refused:reconstruction" if j >= len(cs) - n_ref else "accepted"
    accepted_tracked = sum(1 for c in cases if c.fate == "accepted")
    lost_in_transport = len(reached) - (views_used + views_rejected)

    per_field: dict = {t: Counter() for t in TARGETS}
    per_mut: dict = {}
    for c in cases:
        if c.mutation != "valid":
            per_field[c.target][c.field] += 1
        key = f"{c.target} | {c.field} | {c.mutation}"
        e = per_mut.setdefault(key, {"expect": c.expect, "n": 0, "fates": Counter()})
        e["n"] += 1
        e["fates"][c.fate] += 1
    valid_cases = [c for c in cases if c.expect == "valid"]
    lost = Counter(f"{c.target} | {c.field} | {c.mutation}" for c in valid_cases if c.fate != "accepted")
    garbage = Counter(f"{c.target} | {c.field} | {c.mutation}" for c in cases
                      if c.expect == "refuse" and c.fate == "accepted")
    messages = {t: sum(len(c.messages) for c in cases if c.target == t) for t in TARGETS}
    report = {
        "benchmark": "fuzz_messages", "messages": sum(messages.values()), "messages_per_target": messages,
        "messages_per_topic": dict(sent), "cases": len(cases), "seed": seed, "rate_hz": rate,
        "standardize_method": method, "send_s": round(send_s, 1), "wall_s": round(time.monotonic() - t_start, 1),
        "cases_per_target": {t: dict(Counter(c.expect for c in cases if c.target == t)) for t in TARGETS},
        "mutations_per_field": {t: dict(sorted(v.items())) for t, v in per_field.items()},
        "outcomes_per_mutation": {k: {"expect": v["expect"], "n": v["n"], "fates": dict(v["fates"])}
                                  for k, v in sorted(per_mut.items())},
        "rejections_per_reason": diags,
        "reconstruction": {"views_used": views_used, "views_rejected": views_rejected,
                           "accepted_cases_tracked": accepted_tracked},
        "ingest_published": int(ingest_diag.get("published", -1)),
        "valid_cases": len(valid_cases), "valid_accepted": len(valid_cases) - sum(lost.values()),
        "valid_lost": dict(lost), "garbage_accepted": dict(garbage),
        "either_accepted": sum(1 for c in cases if c.expect == "either" and c.fate == "accepted"),
        "either_refused": sum(1 for c in cases if c.expect == "either" and c.fate != "accepted"),
        "alive_at_end": alive, "exit_codes": codes,
        "crashes": sum(1 for k in nodes if not alive[k] or codes[k] != 0),
        "tracebacks": {k: logs[k].count("Traceback") for k in logs},
        "refusals_logged": {
            "standardize": {"refused_cases": sum(c.fate == "refused:standardize" for c in cases),
                            "without_log_line": sum(1 for c in cases if c.fate == "refused:standardize"
                                                    and c.target == "standardize" and std_dropped[c.key[:40]] == 0
                                                    and c.key)},
            "ingest": {"refused_cases": sum(c.fate == "refused:ingest" for c in cases),
                       "rejections_counted": sum(diags["ingest"].values())}},
        "lost_in_transport": lost_in_transport,
        "accounting_ok": accepted_tracked == views_used and lost_in_transport == 0,
        "rss_mb": rss,
    }
    if tmp is not None:
        tmp.cleanup()
    return report


def print_report(r: dict) -> None:
    print(json.dumps({k: v for k, v in r.items() if k != "outcomes_per_mutation"}, indent=1, default=str))
    rows = []
    for key, v in r["outcomes_per_mutation"].items():
        rows.append([key, v["expect"], v["n"], " ".join(f"{k}={n}" for k, n in sorted(v["fates"].items()))])
    print_table(rows, ["target | field | mutation", "expect", "n", "fates"])
    print()
    rows = [[t, r["messages_per_target"][t], sum(r["mutations_per_field"][t].values()),
             " ".join(f"{k}={n}" for k, n in r["rejections_per_reason"][t].items()),
             r["rss_mb"][t].get("start"), r["rss_mb"][t].get("mid"), r["rss_mb"][t].get("end"),
             r["rss_mb"][t].get("peak"),
             r["alive_at_end"][t], r["exit_codes"][t]] for t in TARGETS]
    print_table(rows, ["node", "messages", "mutated", "rejections by reason", "rss start", "mid", "end", "peak",
                       "alive", "exit"])
    print(f"\n{r['messages']} messages, {r['cases']} cases: valid accepted {r['valid_accepted']}/{r['valid_cases']}, "
          f"garbage accepted {sum(r['garbage_accepted'].values())}, crashes {r['crashes']}, "
          f"reconstruction views_used {r['reconstruction']['views_used']} vs tracked "
          f"{r['reconstruction']['accepted_cases_tracked']}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=150.0, help="messages per second sent")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="log", choices=("log", "model"), help="standardize_node method")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fuzz_messages.json"))
    a = ap.parse_args(argv)
    r = fuzz(a.messages, a.seed, a.rate, Path(a.workdir) if a.workdir else None, a.method)
    print_report(r)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(r, indent=1, default=str))
    ok = not r["crashes"] and not r["valid_lost"] and not r["garbage_accepted"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
