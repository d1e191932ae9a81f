"""ixgs_ros.core must work without ROS: every module imports with rclpy and all ROS messages blocked."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent("""
    import importlib.abc, pkgutil, sys

    BLOCKED = ("rclpy", "rosidl_runtime_py", "rpyutils", "ixgs_ros.msg", "ixgs_ros.nodes", "std_msgs",
               "sensor_msgs", "geometry_msgs", "builtin_interfaces", "visualization_msgs", "rosbags")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"blocked ROS import: {name}")
            return None

    sys.meta_path.insert(0, Blocker())

    import ixgs_ros.core
    modules = ["ixgs_ros.core"]
    def onerror(name):
        raise ImportError(f"cannot import {name}")
    for info in pkgutil.walk_packages(ixgs_ros.core.__path__, "ixgs_ros.core.", onerror=onerror):
        __import__(info.name)
        modules.append(info.name)
    leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    assert not leaked, leaked
    print("\\n".join(modules))
""")


def test_core_imports_without_ros():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    modules = proc.stdout.split()
    assert "ixgs_ros.core.geometry" in modules and "ixgs_ros.core.volume" in modules, modules


def test_blocker_really_blocks():
    """The blocker catches a transitive ROS import (ixgs_ros.nodes.convert imports the ROS messages), so the
    test above cannot pass vacuously."""
    code = BLOCKER.split("import ixgs_ros.core")[0].replace('"ixgs_ros.nodes", ', "")
    code += "import ixgs_ros.nodes.convert\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "blocked ROS import" in proc.stderr, proc.stderr[-2000:]
