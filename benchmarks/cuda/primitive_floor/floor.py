"""Host floor of three ways to put one CUDA kernel into an MLX graph (issue 5).

Times, pipelined as benchmarks/gpu_benchmark.py does (bench), forward and
forward+backward (mx.vjp with a given cotangent) of y = x + 1 on 32768 floats
(the size of seed-1d-256's q) done as:
  mlx op      -- MLX's own elementwise add (the per-op floor)
  custom_fn   -- mx.custom_function over mx.fast.cuda_kernel, the VJP another
                 cuda_kernel call (how natten_mlx's CUDA tier launches today)
  primitive   -- floor_ext.add_scalar: a C++ Primitive whose eval_gpu launches
                 on MLX's command encoder and whose VJP is C++ (build.sh)
and, beside them, natten_mlx's CUDA tier and pure tier on seed-1d-256 fp32.

    python3 floor.py <dir with floor_ext*.so>   (GPU machine, mlx-cuda-13)
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else "/tmp/floor_ext")

import mlx.core as mx  # noqa: E402

import floor_ext  # noqa: E402
from gpu_benchmark import bench, bench_tier, make_case  # noqa: E402


def main():
    n = 32768
    x = mx.random.normal((n,))
    g = mx.random.normal((n,))
    mx.eval(x, g)

    kern = mx.fast.cuda_kernel(name="floor_add", input_names=["x"], output_names=["y"],
                               source="unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; y[i] = x[i] + (float)C;",
                               ensure_row_contiguous=True)

    def launch(a, c):
        return kern(inputs=[a], template=[("C", c)], grid=(n, 1, 1), threadgroup=(256, 1, 1),
                    output_shapes=[a.shape], output_dtypes=[a.dtype])[0]

    @mx.custom_function
    def cf(a):
        return launch(a, 1)

    @cf.vjp
    def cf_vjp(primals, cotangent, output):
        return (launch(cotangent, 0),)

    ways = {
        "mlx op": lambda a: a + 1.0,
        "custom_fn": cf,
        "primitive": lambda a: floor_ext.add_scalar(a, 1.0),
    }
    want = x + 1.0
    rows = []
    for name, f in ways.items():
        got = f(x)
        gx = mx.vjp(f, [x], [g])[1][0]
        ok = bool(mx.allclose(got, want).item()) and bool(mx.allclose(gx, g).item())
        fwd = bench(lambda: f(x))
        fb = bench(lambda: mx.vjp(f, [x], [g])[1])
        rows.append((name, fwd * 1e3, fb * 1e3, ok))
    print(f"mlx {mx.__version__}, device {mx.default_device()}, n = {n} floats; us per call, pipelined, "
          "median of 5 batches")
    print("| way | forward us | forward+backward us | values right |")
    print("|---|---:|---:|---|")
    for name, f, fb, ok in rows:
        print(f"| {name} | {f:.1f} | {fb:.1f} | {ok} |")

    from natten_mlx._core import cuda, pure
    case = make_case({"tag": "seed-1d-256", "B": 1, "spatial": [256], "H": 4, "D": 32, "kernel": [7],
                      "dilation": [1], "dtype": "fp32"})
    for name, mod in (("natten_mlx CUDA tier, seed-1d-256 fp32", cuda), ("pure tier, seed-1d-256 fp32", pure)):
        f, fb = bench_tier(mod, case)
        print(f"| {name} | {f * 1e3:.1f} | {fb * 1e3:.1f} | |")


if __name__ == "__main__":
    main()
