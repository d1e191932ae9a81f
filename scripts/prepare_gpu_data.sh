#!/usr/bin/env bash
# Prepares what scripts/gpu_check.sh needs beside the working tree on a GPU machine, which has its own CUDA
# python (with torch, scipy, scikit-image, pyyaml, safetensors, tqdm) but no registry and no RTK:
#   gpu_data/scan  a full-body 28-view scan of the bundled CT around T12 (25 training + 3 held out), 256^2,
#                  128^3 ROI at 1 mm, with gt.nii.gz (so the GPU run reports 3D PSNR/SSIM)
#   .whl/          pure-Python wheels the GPU image lacks (nibabel)
# Both are git-ignored; name them in the device call's carry: ["gpu_data", ".whl"] (about 20 MB).
#   bash scripts/prepare_gpu_data.sh            # the benchmark scan (minutes: Siddon on 2 cores)
#   GPU_DATA_SMALL=1 bash scripts/prepare_gpu_data.sh   # a small scan for a dry run of gpu_check.sh here
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${IXGS_PYTHON:-.venv/bin/python}
if [[ "${GPU_DATA_SMALL:-0}" != 0 ]]; then
  SIZE=(--views 15 --detector 96 --roi-size 48 --roi-spacing 2.0 --renderer trilinear)
else
  SIZE=(--views 28 --detector 256 --roi-size 128 --roi-spacing 1.0)
fi
rm -rf gpu_data/scan
"$PY" -m ixgs_ros.cli simulate --out gpu_data/scan --roi T12 --mode full-body "${SIZE[@]}" --seed 0 --no-preview
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl "nibabel==$("$PY" -c 'import nibabel; print(nibabel.__version__)')"
du -sh gpu_data .whl
