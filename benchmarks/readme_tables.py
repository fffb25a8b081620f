"""Render the README's performance tables from benchmark result files.

    python benchmarks/readme_tables.py --cpu benchmarks/results/cpu_benchmark_<date>.json \
                                       --gpu benchmarks/results/gpu_benchmark_<device>_<date>.json

Prints markdown; the README pastes it verbatim, so every number there traces
back to a results file written by cpu_benchmark.py or gpu_benchmark.py.
"""

import argparse
import json


def _ms(x):
    if x is None:
        return "—"
    return f"{x:.3f}" if x < 1 else (f"{x:.2f}" if x < 100 else f"{x:.0f}")


def _ratio(num, den):
    return f"{num / den:.2f}x" if num and den else "—"


def cpu_table(path):
    d = json.load(open(path))
    peak = d.get("peak_gflops")
    out = ["| case | dtype | fwd ms | vs pure | vs 0.3.3 | % f32 peak | fwd+bwd ms | vs pure | vs 0.3.3 | bwd/fwd |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        pk = f"{100 * r['fwd_gflops'] / peak:.1f}%" if r.get("fwd_gflops") and peak else "—"
        bf = f"{r['bwd_over_fwd']:.2f}" if r.get("bwd_over_fwd") is not None else "—"
        out.append(f"| {r['case']} | {r['dtype']} | {_ms(r['fwd_ms'])} | {_ratio(r['fwd_pure_ms'], r['fwd_ms'])} | "
                   f"{_ratio(r['fwd_upstream_ms'], r['fwd_ms'])} | {pk} | {_ms(r['fb_ms'])} | "
                   f"{_ratio(r['fb_pure_ms'], r['fb_ms'])} | {_ratio(r['fb_upstream_ms'], r['fb_ms'])} | {bf} |")
    return "\n".join(out)


def gpu_table(path):
    d = json.load(open(path))
    out = ["| case | dtype | ours fwd | ours fwd+bwd | Flex fwd | Flex fwd+bwd | vs Flex fwd | vs Flex fwd+bwd | vs pure fwd | vs pure fwd+bwd |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in d["rows"]:
        out.append(f"| {r['tag']} | {r['dtype']} | {_ms(r.get('cuda_fwd_ms'))} | {_ms(r.get('cuda_fwdbwd_ms'))} | "
                   f"{_ms(r.get('flex_fwd_ms'))} | {_ms(r.get('flex_fwdbwd_ms'))} | "
                   f"{_ratio(r.get('flex_fwd_ms'), r.get('cuda_fwd_ms'))} | "
                   f"{_ratio(r.get('flex_fwdbwd_ms'), r.get('cuda_fwdbwd_ms'))} | "
                   f"{_ratio(r.get('pure_fwd_ms'), r.get('cuda_fwd_ms'))} | "
                   f"{_ratio(r.get('pure_fwdbwd_ms'), r.get('cuda_fwdbwd_ms'))} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu")
    ap.add_argument("--gpu")
    a = ap.parse_args()
    if a.cpu:
        print(cpu_table(a.cpu))
        print()
    if a.gpu:
        print(gpu_table(a.gpu))


if __name__ == "__main__":
    main()
