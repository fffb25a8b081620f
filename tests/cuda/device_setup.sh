#!/bin/sh
# Install MLX's CUDA wheels on the device machine (no network there).
# The mlx-cuda-13 wheel (~90 MB) is split in two parts (.whlA/part.aa with
# the mlx frontend wheel, .whlB/part.ab with pytest wheels) because one call
# carries at most 64 MiB; both folders must already be on the machine.
# Installs into the image's python3 environment so that libmlx.so's RPATH
# ($ORIGIN/../../nvidia/...) finds the NVIDIA pip libraries PyTorch brought.
set -e
PY=${PY:-python3}
W=/tmp/mlxwhl
mkdir -p $W
cat .whlA/mlxcuda.part.aa .whlB/mlxcuda.part.ab > $W/mlx_cuda_13-0.32.4-py3-none-manylinux_2_35_x86_64.whl
cp .whlA/mlx-0.32.4-*.whl $W/
$PY -m pip install -q --no-index --no-deps --no-compile $W/*.whl
$PY -c "import pytest" 2>/dev/null || $PY -m pip install -q --no-index --no-deps --no-compile .whlB/pt/*.whl
$PY -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device(), mx.cuda.is_available()); a=mx.ones((4,)); print((a+1).sum().item())"
