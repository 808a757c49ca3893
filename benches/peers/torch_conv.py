"""PyTorch CPU (oneDNN) timings for the layer suite in ../bench/b0_layers.tsv.

Same shapes, same passes and the same JSON-lines contract as `effnet bench ops --json`
(a copy of shared/peers/torch_conv.py with the suite path of this repository),
so the two can be compared row by row. For every row it times both memory layouts
(NCHW and channels-last) and reports the faster one: the best a PyTorch user gets.

  python3 torch_conv.py --batch 8 --threads 2 > torch.jsonl

Needs: pip install torch (in a virtual environment; not a dependency of the project).
"""
import argparse, json, os, sys, torch, torch.nn.functional as F
from torch.utils import benchmark

def layers(path):
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, ci, co, h, w, k, s, gs = line.split()
        yield name, int(ci), int(co), int(h), int(w), int(k), int(s), int(gs)

def time_ms(stmt, g, min_time):
    return benchmark.Timer(stmt, globals=g).blocked_autorange(min_run_time=min_time).median * 1e3

def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default=os.path.join(here, "..", "suites", "b0_layers.tsv"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--only", help="substring filter on layer names")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    stmts = {
        "fwd": "F.conv2d(x, wt, stride=s, padding=p, groups=g)",
        "bwd_data": "torch.nn.grad.conv2d_input(x.shape, wt, gy, stride=s, padding=p, groups=g)",
        "bwd_weight": "torch.nn.grad.conv2d_weight(x, wt.shape, gy, stride=s, padding=p, groups=g)",
    }
    for name, ci, co, h, w, k, s, gs in layers(a.suite):
        if a.only and a.only not in name:
            continue
        groups = 1 if gs == 0 else ci // gs
        best = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(a.batch, ci, h, w).contiguous(memory_format=fmt)
            wt = torch.randn(co, ci // groups, k, k).contiguous(memory_format=fmt)
            y = F.conv2d(x, wt, stride=s, padding=k // 2, groups=groups)
            gy = torch.randn_like(y).contiguous(memory_format=fmt)
            env = dict(F=F, torch=torch, x=x, wt=wt, gy=gy, s=s, p=k // 2, g=groups)
            for pas, stmt in stmts.items():
                ms = time_ms(stmt, env, a.min_time)
                best[pas] = min(best.get(pas, float("inf")), ms)
        ho, wo = y.shape[2], y.shape[3]
        flops = 2.0 * a.batch * co * ho * wo * (ci // groups) * k * k
        for pas, ms in best.items():
            print(json.dumps(dict(name=name, pass_=pas, ms=ms, gflops=flops / ms / 1e6,
                                  threads=a.threads, batch=a.batch, impl="pytorch")).replace("pass_", "pass"), flush=True)

if __name__ == "__main__":
    sys.exit(main())
