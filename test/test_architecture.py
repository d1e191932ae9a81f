"""Everything but ixgs_ros.nodes must work without ROS: every module of the ROS-free packages imports with rclpy
and all ROS messages blocked."""
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

    import importlib
    modules = []
    def onerror(name):
        raise ImportError(f"cannot import {name}")
    for top in ("core", "engine", "simulation", "standardize", "outputs", "evaluation", "commands"):
        pkg = importlib.import_module("ixgs_ros." + top)
        modules.append(pkg.__name__)
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".", onerror=onerror):
            __import__(info.name)
            modules.append(info.name)
    for mod in ("ixgs_ros.pipeline", "ixgs_ros.cli"):
        __import__(mod)
        modules.append(mod)
    leaked = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    assert not leaked, leaked
    print("\\n".join(modules))
""")


def test_core_imports_without_ros():
    proc = subprocess.run([sys.executable, "-c", BLOCKER], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    modules = proc.stdout.split()
    for m in ("ixgs_ros.core.geometry", "ixgs_ros.engine.engine", "ixgs_ros.engine.live", "ixgs_ros.pipeline",
              "ixgs_ros.simulation.simulate", "ixgs_ros.outputs.navigation", "ixgs_ros.evaluation.bench.runner"):
        assert m in modules, modules


def test_blocker_really_blocks():
    """The blocker catches a transitive ROS import (ixgs_ros.nodes.convert imports the ROS messages), so the
    test above cannot pass vacuously."""
    code = BLOCKER.split("\nimport importlib\n")[0].replace('"ixgs_ros.nodes", ', "")
    code += "import ixgs_ros.nodes.convert\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "blocked ROS import" in proc.stderr, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------ layering
#: Which package may import which: each folder is one concern and the data flow reads top-down.
ALLOWED = {
    "core": {"core"},
    "engine": {"core", "engine", "evaluation.metrics"},  # held-out views are scored with the field's metrics
    "simulation": {"core", "simulation"},
    "standardize": {"core", "simulation", "standardize"},  # the model trains on simulated images
    "outputs": {"core", "outputs"},
    "pipeline": {"core", "engine", "outputs", "evaluation"},
    "evaluation": {"core", "engine", "simulation", "standardize", "outputs", "evaluation", "pipeline"},
    "commands": {"core", "engine", "simulation", "standardize", "outputs", "evaluation", "pipeline", "commands"},
    "nodes": {"core", "engine", "simulation", "standardize", "outputs", "nodes", "msg"},
}
#: Longer files must say why at their top (a module docstring line starting "Long because").
MAX_LINES = 500


def _package_files():
    for path in sorted((ROOT / "ixgs_ros").rglob("*.py")):
        rel = path.relative_to(ROOT / "ixgs_ros")
        top = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        yield path, top


def _imported_packages(path):
    import ast

    tree = ast.parse(path.read_text())
    pkg_parts = path.relative_to(ROOT).with_suffix("").parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(pkg_parts[: len(pkg_parts) - (node.level - 1)])
                full = base + (node.module.split(".") if node.module else [])
                if not node.module:  # from . import a, b
                    for a in node.names:
                        yield ".".join((full + [a.name])[1:3])
                    continue
            else:
                full = node.module.split(".")
            if full[0] == "ixgs_ros" and len(full) > 1:
                yield ".".join(full[1:3])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "ixgs_ros" and len(parts) > 1:
                    yield ".".join(parts[1:3])


def test_each_package_imports_only_the_layers_below_it():
    bad = []
    for path, top in _package_files():
        if top not in ALLOWED:
            continue
        for imported in set(_imported_packages(path)):
            first = imported.split(".")[0]
            if first in ALLOWED.keys() | {"msg"} and first not in ALLOWED[top] and imported not in ALLOWED[top]:
                bad.append(f"{path.relative_to(ROOT)} imports ixgs_ros.{imported}")
    assert not bad, "\n".join(bad)


def test_modules_stay_small_or_say_why():
    long = []
    for path, _ in _package_files():
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES and "Long because" not in text[:3000]:
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, "\n".join(long)
