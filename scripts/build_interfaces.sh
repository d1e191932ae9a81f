#!/usr/bin/env bash
# Generate and install the ROS 2 interfaces of msg/ and srv/ (ixgs_ros.msg: XrayView, Volume, ReconstructionStatus,
# BoneMesh, BoneMeshes; ixgs_ros.srv: SaveSnapshot) into a virtual environment whose ROS 2 comes from the PyPI
# wheels, and tf2_msgs/msg/TFMessage (interfaces/tf2_msgs, its public definition) when that environment has no
# tf2_msgs (there is no wheel of it).
#
#   bash scripts/build_interfaces.sh [VENV]      (default: .venv next to this repository)
#
# Plain cmake (no colcon): configure/build/install CMakeLists.txt with IXGS_INSTALL_PYTHON=OFF into the
# VENV prefix, with VENV's python; only the interfaces are installed (the Python sources are the editable
# install made by scripts/setup.sh). Build tree: build/ros_interfaces, log: build/ros_interfaces.log.
# Idempotent: a re-run with nothing changed takes ~3 s (re-configure + import check), a clean build ~10 s on
# an idle 2-core machine (~30 s when the machine is busy).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$(cd "${1:-$ROOT/.venv}" && pwd)"
PY="$VENV/bin/python"
BUILD="$ROOT/build/ros_interfaces"
[[ -x "$PY" ]] || { echo "[interfaces] error: no python at $PY" >&2; exit 1; }
[[ -d "$VENV/share/rosidl_default_generators" ]] || {
  echo "[interfaces] error: $VENV has no ROS 2 rosidl wheels (install requirements.lock first)" >&2; exit 1; }

# A build tree configured for another source tree cannot be reused (a new prefix is just re-configured).
if [[ -f "$BUILD/CMakeCache.txt" ]] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$ROOT" "$BUILD/CMakeCache.txt"; then
  rm -rf "$BUILD"
fi

export PATH="$VENV/bin:$PATH"
export AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
GEN=()
if [[ ! -f "$BUILD/CMakeCache.txt" ]] && command -v ninja >/dev/null; then GEN=(-G Ninja); fi

LOG="$ROOT/build/ros_interfaces.log"
mkdir -p "$ROOT/build"
: > "$LOG"
quiet() { "$@" >>"$LOG" 2>&1 || { tail -n 60 "$LOG" >&2; echo "[interfaces] error: '$*' failed (log: $LOG)" >&2; exit 1; }; }

# tf2_msgs first when missing (or when the one there is this generated copy: rebuilt, a no-op when unchanged)
TF2_SRC="$ROOT/interfaces/tf2_msgs"
TF2_BUILD="$ROOT/build/tf2_msgs"
if ! (cd / && "$PY" -c "import tf2_msgs.msg" 2>/dev/null) || grep -qs "ixgs_ros" "$VENV/share/tf2_msgs/package.xml"; then
  if [[ -f "$TF2_BUILD/CMakeCache.txt" ]] && ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$TF2_SRC" "$TF2_BUILD/CMakeCache.txt"; then
    rm -rf "$TF2_BUILD"
  fi
  TF2_GEN=()
  if [[ ! -f "$TF2_BUILD/CMakeCache.txt" ]] && command -v ninja >/dev/null; then TF2_GEN=(-G Ninja); fi
  quiet cmake -S "$TF2_SRC" -B "$TF2_BUILD" "${TF2_GEN[@]}" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$PY" -DPython3_FIND_VIRTUALENV=ONLY -DBUILD_TESTING=OFF
  quiet cmake --build "$TF2_BUILD" --parallel "$(nproc)"
  quiet cmake --install "$TF2_BUILD"
  (cd / && "$PY" -c "import tf2_msgs.msg as m; m.TFMessage()") \
    || { echo "[interfaces] error: tf2_msgs.msg does not import from $PY" >&2; exit 1; }
  echo "[interfaces] tf2_msgs.msg (generated from its public definition) installed into $VENV"
fi

quiet cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$VENV" \
  -DPython3_EXECUTABLE="$PY" \
  -DPython3_FIND_VIRTUALENV=ONLY \
  -DIXGS_INSTALL_PYTHON=OFF \
  -DBUILD_TESTING=OFF
quiet cmake --build "$BUILD" --parallel "$(nproc)"
quiet cmake --install "$BUILD"

# The generated messages must import from anywhere, together with the source tree's package.
(cd / && "$PY" -c "import ixgs_ros.msg as m, ixgs_ros.srv as s, ixgs_ros.core.geometry; m.XrayView(); m.Volume()
m.ReconstructionStatus(); m.BoneMeshes(); s.SaveSnapshot.Request()") \
  || { echo "[interfaces] error: ixgs_ros.msg does not import from $PY" >&2; exit 1; }
echo "[interfaces] ixgs_ros.msg installed into $VENV"
