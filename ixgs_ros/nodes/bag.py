"""Recorded acquisitions as ROS 2 bags (rosbag2 folders, mcap storage) through ``rosbags`` (pure Python).

* :func:`write_record_bag` turns a shot record (:mod:`ixgs_ros.core.shot_record`, what ``xray_ingest_node``
  writes) into a bag of the C-arm's raw streams: ``image_raw`` (sensor_msgs/Image as recorded: 16UC1 / mono8 /
  32FC1), ``camera_info`` and ``source_pose`` (geometry_msgs/PoseStamped in ``world_frame``, metres), each under
  the shot's stamp; ``ros2 bag play`` or ``scan_player_node`` (``bag`` parameter) replays it.
* :func:`read_bag` yields the messages of a bag (any rosbag2 folder, mcap or sqlite3, e.g. from ``ros2 bag
  record``) in time order, as raw CDR bytes with their topic and type, which rclpy publishes as they are.

Command line: ``python -m ixgs_ros.nodes.bag export RECORD_DIR OUT_BAG [--world-frame F]``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from ixgs_ros.core.frames import rotation_to_quaternion
from ixgs_ros.core.shot_record import RecordError, ShotRecord

__all__ = ["write_record_bag", "read_bag", "BagMessage", "PLAYED_TYPES"]

#: Message types the player republishes, and the topic each goes to (relative topics under its namespace; tf
#: keeps its absolute topic name from the bag).
PLAYED_TYPES = {"sensor_msgs/msg/Image": "image_raw", "sensor_msgs/msg/CameraInfo": "camera_info",
                "geometry_msgs/msg/PoseStamped": "source_pose", "tf2_msgs/msg/TFMessage": None}
_ENCODINGS = {np.dtype(np.uint16): ("16UC1", 2), np.dtype(np.uint8): ("mono8", 1), np.dtype(np.float32): ("32FC1", 4),
              np.dtype(np.float64): ("64FC1", 8)}


class BagMessage(tuple):
    """``(topic, msgtype, rawdata, timestamp_ns)``."""
    __slots__ = ()

    @property
    def topic(self) -> str:
        return self[0]

    @property
    def msgtype(self) -> str:
        return self[1]

    @property
    def data(self) -> bytes:
        return self[2]

    @property
    def timestamp_ns(self) -> int:
        return self[3]


def _typestore():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def write_record_bag(record_dir, out_bag, *, world_frame: str = "world",
                     optical_frame: str = "xray_source_optical") -> int:
    """Write the shots of a shot record as a bag folder ``out_bag`` (mcap storage; must not exist). Returns the
    number of shots written; RecordError for an unreadable record or an image dtype a ROS image cannot carry."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    shots = ShotRecord(record_dir).entries()
    if not shots:
        raise RecordError(f"{record_dir}: no shots recorded")
    ts = _typestore()
    T = ts.types
    Time, Header = T["builtin_interfaces/msg/Time"], T["std_msgs/msg/Header"]

    def header(stamp: float, frame: str):
        sec = int(np.floor(stamp))
        return Header(stamp=Time(sec=sec, nanosec=int(round((stamp - sec) * 1e9)) % 1_000_000_000), frame_id=frame)

    out = Path(out_bag)
    with Writer(out, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=ts) for topic, msgtype in
                 (("image_raw", "sensor_msgs/msg/Image"), ("camera_info", "sensor_msgs/msg/CameraInfo"),
                  ("source_pose", "geometry_msgs/msg/PoseStamped"))}
        for shot in shots:
            image = np.ascontiguousarray(shot.image())
            enc = _ENCODINGS.get(image.dtype.newbyteorder("="))
            if enc is None:
                raise RecordError(f"shot {shot.view_id!r}: images of dtype {image.dtype} have no ROS encoding here")
            h = header(shot.stamp, optical_frame)
            img = T["sensor_msgs/msg/Image"](header=h, height=shot.height, width=shot.width, encoding=enc[0],
                                             is_bigendian=int(sys.byteorder == "big"), step=shot.width * enc[1],
                                             data=np.frombuffer(image.tobytes(), dtype=np.uint8))
            K = shot.K
            P = np.zeros((3, 4))
            P[:, :3] = K
            roi = T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
            info = T["sensor_msgs/msg/CameraInfo"](
                header=h, height=shot.height, width=shot.width, distortion_model="", d=np.zeros(0),
                k=K.reshape(9).astype(np.float64), r=np.eye(3).reshape(9), p=P.reshape(12), binning_x=0,
                binning_y=0, roi=roi)
            x, y, z, w = rotation_to_quaternion(shot.T_world_source[:3, :3])
            px, py, pz = (shot.T_world_source[:3, 3] / 1000.0).tolist()
            pose = T["geometry_msgs/msg/PoseStamped"](
                header=header(shot.stamp, world_frame),
                pose=T["geometry_msgs/msg/Pose"](position=T["geometry_msgs/msg/Point"](x=px, y=py, z=pz),
                                                 orientation=T["geometry_msgs/msg/Quaternion"](x=x, y=y, z=z, w=w)))
            t_ns = int(round(shot.stamp * 1e9))
            for topic, msg, typ in (("camera_info", info, "sensor_msgs/msg/CameraInfo"),
                                    ("source_pose", pose, "geometry_msgs/msg/PoseStamped"),
                                    ("image_raw", img, "sensor_msgs/msg/Image")):
                writer.write(conns[topic], t_ns, bytes(ts.serialize_cdr(msg, typ)))
    return len(shots)


def read_bag(path) -> Iterator[BagMessage]:
    """The messages of a rosbag2 folder (mcap or sqlite3 storage) in time order."""
    from rosbags.highlevel import AnyReader

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"bag {p}: not found")
    with AnyReader([p], default_typestore=_typestore()) as reader:
        for conn, timestamp, raw in reader.messages():
            yield BagMessage((conn.topic, conn.msgtype, bytes(raw), int(timestamp)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ixgs_ros.nodes.bag", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="a shot record as a bag of image_raw, camera_info and source_pose")
    ex.add_argument("record_dir")
    ex.add_argument("out_bag")
    ex.add_argument("--world-frame", default="world")
    args = ap.parse_args(argv)
    try:
        n = write_record_bag(args.record_dir, args.out_bag, world_frame=args.world_frame)
    except (RecordError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} shots to {args.out_bag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
