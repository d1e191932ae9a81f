"""The package builds as a ROS 2 package with colcon (ament_cmake) against the ROS 2 wheels of this
virtual environment, and installs what `ros2 run` / `ros2 launch` / Python users need.

Building against the PyPI wheels needs the virtual environment on PATH and its prefix in
AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH (nothing is sourced: the wheels have no setup scripts), plus
-DPython3_EXECUTABLE=<venv python>. The same recipe is what users of the wheels type by hand.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ITEMS = ["package.xml", "CMakeLists.txt", "cmake", "msg", "srv", "ixgs_ros", "setup.py", "setup.cfg",
                 "resource", "launch", "config"]
NODES = ["xray_ingest_node", "standardize_node", "reconstruction_node", "scan_player_node"]
MESSAGES = {"XrayView": "_xray_view.py", "Volume": "_volume.py", "ReconstructionStatus": "_reconstruction_status.py",
            "BoneMesh": "_bone_mesh.py", "BoneMeshes": "_bone_meshes.py"}

pytestmark = pytest.mark.ros


def colcon_env(venv: Path) -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    for var in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        env[var] = os.pathsep.join(p for p in (str(venv), env.get(var)) if p)
    # colcon adds "-j<cpus> -l<cpus>" unless MAKEFLAGS sets jobs; the load limit serialises the build on a
    # busy 2-core machine
    env["MAKEFLAGS"] = f"-j{os.cpu_count() or 2}"
    env.pop("PYTHONPATH", None)
    return env


def test_colcon_build_installs_interfaces_and_nodes(tmp_path):
    venv = Path(sys.prefix)
    colcon = venv / "bin" / "colcon"
    assert colcon.exists(), f"{colcon} missing: run scripts/setup.sh (colcon is in requirements.lock)"
    src = tmp_path / "ws" / "src" / "ixgs_ros"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for item in PACKAGE_ITEMS:
        path = ROOT / item
        if path.is_dir():
            shutil.copytree(path, src / item, ignore=ignore)
        else:
            shutil.copy2(path, src / item)

    cmd = [str(colcon), "build", "--cmake-args",
           f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
    if shutil.which("ninja", path=str(venv / "bin") + os.pathsep + os.environ.get("PATH", "")):
        cmd += ["-G", "Ninja"]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tmp_path / "ws", env=colcon_env(venv), capture_output=True, text=True,
                          timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, f"colcon build failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    print(f"colcon build: {elapsed:.1f} s")

    install = tmp_path / "ws" / "install" / "ixgs_ros"
    pyver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = install / "lib" / pyver / "site-packages"
    # generated Python interfaces and their type support
    for module in MESSAGES.values():
        assert (site / "ixgs_ros" / "msg" / module).is_file(), module
    assert (site / "ixgs_ros" / "srv" / "_save_snapshot.py").is_file()
    assert list((site / "ixgs_ros").glob("ixgs_ros_s__rosidl_typesupport_c*.so"))
    assert (install / "lib" / "libixgs_ros__rosidl_typesupport_c.so").is_file()
    # the Python sources next to them, with the real package __init__ (not rosidl's empty one)
    assert (site / "ixgs_ros" / "__init__.py").read_text() == (ROOT / "ixgs_ros" / "__init__.py").read_text()
    assert (site / "ixgs_ros" / "core" / "geometry.py").is_file()
    assert (site / "ixgs_ros" / "nodes" / "convert.py").is_file()
    # node executables where `ros2 run ixgs_ros <node>` looks
    for node in NODES:
        exe = install / "lib" / "ixgs_ros" / node
        assert exe.is_file() and os.access(exe, os.X_OK), node
        assert exe.read_text().splitlines()[0] == f"#!{sys.executable}"
    share = install / "share" / "ixgs_ros"
    for rel in ("package.xml", "launch/ixgs.launch.py", "config/ixgs.yaml", "config/fastdds_profile.xml",
                "msg/XrayView.msg"):
        assert (share / rel).is_file(), rel
    index = install / "share" / "ament_index" / "resource_index"
    assert (index / "packages" / "ixgs_ros").is_file()
    assert set((index / "rosidl_interfaces" / "ixgs_ros").read_text().split()) >= {f"msg/{m}.msg" for m in MESSAGES}

    # the installed tree works on its own: messages (de)serialise through the installed type support, and an
    # installed node executable runs (it exits at once on a bad parameter, no ROS graph needed)
    env = colcon_env(venv)
    env["PYTHONPATH"] = str(site)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(install / "lib"), env.get("LD_LIBRARY_PATH")) if p)
    check = (
        "import ixgs_ros, ixgs_ros.msg as m\n"
        "from rclpy.serialization import serialize_message, deserialize_message\n"
        f"assert ixgs_ros.__file__.startswith({str(site)!r}), ixgs_ros.__file__\n"
        f"assert m.__file__.startswith({str(site)!r}), m.__file__\n"
        "v = m.Volume(units='1/mm'); v.size[:] = [1, 2, 3]\n"
        "w = deserialize_message(serialize_message(v), m.Volume)\n"
        "assert w.units == '1/mm' and list(w.size) == [1, 2, 3]\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
    node = subprocess.run([str(install / "lib" / "ixgs_ros" / "standardize_node"), "--ros-args", "-p",
                           "downsample:=0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert node.returncode == 2 and "downsample must be >= 1" in node.stderr, node.stderr[-3000:]
