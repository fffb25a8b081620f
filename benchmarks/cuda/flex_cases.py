"""FlexAttention NA timings for a few anchor cases only (the anchor script
benchmarks/anchors/flex_na_h100.py runs all of them, with dense SDPA).
Usage: python3 benchmarks/cuda/flex_cases.py TAG[:dtype] ...   (dtype default bf16)
Prints one JSON line per case (flex_fwd_ms, flex_fwdbwd_ms)."""
import json, os, sys, time

src = open(os.path.join(os.path.dirname(__file__), "..", "anchors", "flex_na_h100.py")).read()
src = src.split("\nout = []")[0]  # definitions and CASES, not the run over all cases
# skip the dense SDPA ceiling: do_bench(None) raises inside run()'s try
src = src.replace("s = lambda: F.scaled_dot_product_attention(q, k, v)", "s = None")
g = globals()  # torch.compile re-imports the functions' module by name: keep them in __main__
exec(compile(src, "flex_na_h100.py", "exec"), g)
want = [a.split(":") + (["bf16"] if ":" not in a else []) for a in sys.argv[1:]]
for c in g["CASES"]:
    if [c["tag"], c["dtype"]] in want:
        t = time.time()
        r = g["run"](c)
        r["wall_s"] = round(time.time() - t, 1)
        print(json.dumps({k: r[k] for k in ("tag", "dtype", "flex_fwd_ms", "flex_fwdbwd_ms", "wall_s")}), flush=True)
