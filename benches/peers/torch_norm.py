"""PyTorch CPU timings of the normalization + activation ops of `effnet bench norm`.

Same shapes (the output of every depthwise/grouped spatial layer of the suite), names
(`<layer>:ln_pn_swish`, `<layer>:gn_swish`, `<layer>:bn_swish`), passes (`fwd`, `bwd`)
and JSON-lines contract as `effnet bench norm --json`, so the two can be compared row
by row:

  python3 torch_norm.py --batch 8 --threads 2 > torch_norm.jsonl

- ln_pn_swish: the composition of the same math: F.layer_norm (no affine) over
  (H, W, C), the per-channel affine, F.silu, and the proxy correction (K = 200 normal
  quantiles through the same affine, their mean and variance, (a - mu) * s).
- gn_swish: F.group_norm (4 groups, affine) + F.silu.
- bn_swish: F.batch_norm in training mode (affine) + F.silu.

The forward is timed under torch.no_grad() (PyTorch's fastest forward); the backward is
torch.autograd.grad of the recorded graph with respect to the input and every parameter.
GroupNorm and BatchNorm are timed in NCHW and channels-last and the faster is reported;
LayerNorm + Proxy Norm in NHWC and NCHW. One backward pass runs before any timing.
"gflops" uses the same nominal per-element counts as effnet; "gbps" the same byte counts
(forward 3 tensors, backward 5), so the ratios of "ms" are what matter.

Needs: pip install torch (in a virtual environment; not a dependency of the project).
"""
import argparse, json, os, sys
import torch, torch.nn.functional as F
from torch.utils import benchmark


def layers(path):
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        name, ci, co, h, w, k, s, gs = line.split()
        ci, co, h, w, k, s, gs = map(int, (ci, co, h, w, k, s, gs))
        if k > 1 and gs != 0 and gs < ci:
            yield name, co, (h + 2 * (k // 2) - k) // s + 1, (w + 2 * (k // 2) - k) // s + 1


def time_ms(fn, min_time):
    return benchmark.Timer("fn()", globals=dict(fn=fn)).blocked_autorange(min_run_time=min_time).median * 1e3


def quantiles(k):
    p = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    return torch.special.ndtri(p).float()


def ln_pn_swish(x, g, b, bp, gp, q, channel_dim, eps=1e-3, eps_pn=0.03):
    """z = (silu(g * LN(x) + b) - mu) * s with the proxy statistics of the K quantiles."""
    shape = [1] * x.dim()
    shape[channel_dim] = -1
    xn = F.layer_norm(x, x.shape[1:], eps=eps)
    a = F.silu(xn * g.view(shape) + b.view(shape))
    p = g * (bp + (1 + gp) * q[:, None]) + b  # [K, C]
    r = F.silu(p)
    mu = r.mean(0)
    s = torch.rsqrt(r.var(0, unbiased=False) + eps_pn)
    return (a - mu.view(shape)) * s.view(shape)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", default=os.path.join(here, "..", "suites", "b0_layers.tsv"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--min-time", type=float, default=0.2)
    ap.add_argument("--only", help="substring filter on layer names")
    ap.add_argument("--ops", default="ln_pn_swish,gn_swish,bn_swish")
    ap.add_argument("--groups", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ops = a.ops.split(",")
    q = quantiles(200)
    warmed = False
    for name, c, h, w in layers(a.suite):
        if a.only and a.only not in name:
            continue
        n = a.batch * h * w * c
        for op in ops:
            best = {}
            if op == "ln_pn_swish":
                variants = [("nhwc", (a.batch, h, w, c), 3), ("nchw", (a.batch, c, h, w), 1)]
            else:
                variants = [(fmt, (a.batch, c, h, w), 1) for fmt in ("nchw", "channels_last")]
            for fmt, shape, cdim in variants:
                x = torch.randn(*shape)
                if fmt == "channels_last":
                    x = x.contiguous(memory_format=torch.channels_last)
                g = (1 + 0.1 * torch.randn(c))
                b = 0.1 * torch.randn(c)
                params = [g, b]
                if op == "ln_pn_swish":
                    bp, gp = 0.1 * torch.randn(c), 0.1 * torch.randn(c)
                    params += [bp, gp]
                    f = lambda x, g, b, bp, gp: ln_pn_swish(x, g, b, bp, gp, q, cdim)
                elif op == "gn_swish":
                    f = lambda x, g, b: F.silu(F.group_norm(x, a.groups, g, b, eps=1e-3))
                elif op == "bn_swish":
                    rm, rv = torch.zeros(c), torch.ones(c)
                    f = lambda x, g, b: F.silu(F.batch_norm(x, rm, rv, g, b, training=True,
                                                            momentum=0.1, eps=1e-3))
                else:
                    sys.exit(f"unknown op {op}")
                leaves = [t.clone().requires_grad_(True) for t in [x] + params]
                y = f(*leaves)
                gy = torch.randn_like(y)
                if not warmed:
                    torch.autograd.grad(y, leaves, gy, retain_graph=True)
                    warmed = True

                def fwd():
                    with torch.no_grad():
                        f(x, *params)

                def bwd():
                    torch.autograd.grad(y, leaves, gy, retain_graph=True)

                for pas, fn in (("fwd", fwd), ("bwd", bwd)):
                    best[pas] = min(best.get(pas, float("inf")), time_ms(fn, a.min_time))
            per_elem = {"fwd": 14.0 if op == "ln_pn_swish" else 12.0,
                        "bwd": 30.0 if op == "ln_pn_swish" else 28.0}
            for pas, ms in best.items():
                nbytes = (3 if pas == "fwd" else 5) * 4.0 * n
                print(json.dumps({"name": f"{name}:{op}", "pass": pas, "ms": ms,
                                  "gflops": per_elem[pas] * n / ms / 1e6,
                                  "gbps": nbytes / ms / 1e6, "threads": a.threads,
                                  "batch": a.batch, "impl": "pytorch"}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
