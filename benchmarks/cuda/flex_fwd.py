"""FlexAttention NA forward alone, for A/B runs beside benchmarks/cuda/fwd_bench.cu
in the same device call: the anchor script's mask and compile
(benchmarks/anchors/flex_na_h100.py), triton do_bench median, bf16.
Usage: python3 benchmarks/cuda/flex_fwd.py TAG [TAG...]"""
import json
import math
import os
import sys

src = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "anchors", "flex_na_h100.py")).read()
g = {}
exec(compile(src.split("\nout = []\nfor c in CASES", 1)[0], "flex_na_h100.py", "exec"), g)
torch = g["torch"]
for c in g["CASES"]:
    if c["tag"] not in sys.argv[1:] or c["dtype"] != "bf16":
        continue
    B, X, H, D, K = c["B"], c["spatial"], c["H"], c["D"], c["kernel"]
    N = math.prod(X)
    q = torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    torch._dynamo.reset()
    flex = torch.compile(g["flex_attention"], dynamic=False)
    bm = g["create_block_mask"](g["na_mask"](X, K, c["dilation"]), None, None, N, N, device="cuda", _compile=True)
    f = lambda: flex(q, k, v, block_mask=bm)
    f()
    ms = g["do_bench"](f, warmup=25, rep=200, return_mode="median")
    fl = g["flops_fwd"](B, H, N, math.prod(K), D)
    print("FLEX " + json.dumps({"tag": c["tag"], "flex_fwd_ms": ms, "tflops": fl / ms / 1e9}), flush=True)
    del q, k, v, bm
    torch.cuda.empty_cache()
