#!/bin/sh
# Build floor_ext against the MLX that python3 imports (mlx-cuda-13 on the GPU
# machine) with nanobind compiled in the same way as mlx.core's (static, in
# the "mlx" domain): otherwise mx.array arguments do not convert.
#   PY=python3 [NB=<dir holding nanobind 3.1.0>] sh build.sh <outdir>
# Needs nvcc and g++; the GPU machine's image has both and nanobind 3.1.0.
set -e
HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PY:-python3}
OUT=${1:-/tmp/floor_ext}
mkdir -p "$OUT"
MLX=${MLXDIR:-$($PY -c "import mlx; print(list(mlx.__path__)[0])")}
NBDIR=$(PYTHONPATH=${NB:-} $PY -c "import nanobind, os; print(os.path.dirname(nanobind.__file__))")
PYINC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
# No Py_LIMITED_API: built with it (nanobind's STABLE_ABI), mx.array arguments
# did not convert under mlx-cuda-13 0.32.4 on Python 3.12 (a different nanobind
# ABI record from mlx.core's).  MLXDIR=<mlx package dir> overrides the import.
FLAGS="-O2 -fPIC -std=c++20 -DNB_DOMAIN=mlx -DNB_COMPACT_ASSERTIONS -I$NBDIR/include -I$NBDIR/ext/robin_map/include -I$PYINC -I$MLX/include -I$HERE/shim"

g++ $FLAGS -fvisibility=hidden -c "$NBDIR/src/nb_combined.cpp" -o "$OUT/nb_combined.o"
nvcc $(echo "$FLAGS" | sed 's/-fPIC/-Xcompiler -fPIC/') -Xcompiler -fvisibility=hidden -diag-suppress 997 \
     -gencode=arch=compute_90a,code=sm_90a -c "$HERE/floor_ext.cu" -o "$OUT/floor_ext.o"
nvcc -shared -o "$OUT/floor_ext$EXT" "$OUT/floor_ext.o" "$OUT/nb_combined.o" -L"$MLX/lib" -lmlx \
     -Xlinker -rpath -Xlinker "$MLX/lib" -cudart shared  # libmlx.so keeps its own (static) runtime: see floor_ext.cu
echo "built $OUT/floor_ext$EXT"
