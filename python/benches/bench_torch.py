#!/usr/bin/env python3
"""Timings of effnet's PyTorch modules against stock PyTorch (BENCHMARKS.md, "PyTorch
integration (issue 15)").

    python python/benches/bench_torch.py steps      # training steps, timm B0 and G16
    python python/benches/bench_torch.py ops        # Conv2d per layer, fwd + bwd
    python python/benches/bench_torch.py overhead   # Python-path cost of a tiny op

Every figure is the fastest of ``--rounds`` rounds; the rounds interleave the sides
being compared, so that a noisy neighbour slows both alike. Needs torch and timm.
OpenMP's spin-waiting is turned off (``OMP_WAIT_POLICY=PASSIVE``, set before torch
loads) for every side: PyTorch's idle OpenMP threads otherwise spin on the cores that
effnet's workers need between two effnet calls (and under load they slow PyTorch).
"""

import argparse
import copy
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F

import effnet
import effnet.torch as et

SUITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benches",
                     "suites", "b0_layers.tsv")


def timm_b0_g16():
    """Stock timm EfficientNet-B0 with G16 spatial convolutions (16 channels per
    group) and expansion 4 after the first stage: the paper's B0-G16 (BatchNorm)."""
    from functools import partial

    from timm.models._efficientnet_builder import decode_arch_def, round_channels
    from timm.models.efficientnet import EfficientNet

    arch = [["ds_r1_k3_s1_e1_c16_se0.25"], ["ir_r2_k3_s2_e4_c24_se0.25"],
            ["ir_r2_k5_s2_e4_c40_se0.25"], ["ir_r3_k3_s2_e4_c80_se0.25"],
            ["ir_r3_k5_s1_e4_c112_se0.25"], ["ir_r4_k5_s2_e4_c192_se0.25"],
            ["ir_r1_k3_s1_e4_c320_se0.25"]]
    return EfficientNet(block_args=decode_arch_def(arch, 1.0, group_size=16),
                        num_features=1280, stem_size=32,
                        round_chs_fn=partial(round_channels, multiplier=1.0),
                        act_layer=torch.nn.SiLU)


def best_of(fn, rounds_fns, rounds):
    """Interleaved timing: ``rounds`` times, every function of ``rounds_fns`` once."""
    best = {k: float("inf") for k in rounds_fns}
    for _ in range(rounds):
        for k, f in rounds_fns.items():
            t = time.perf_counter()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def steps(a):
    """One SGD training step (forward, cross-entropy, backward, update) of timm's
    network in PyTorch (NCHW and channels-last), with effnet's convolutions and norms
    swapped in, and as ``effnet.torch.efficientnet`` (every op on effnet but the
    residual adds, the classifier and the loss) with the same weights."""
    import timm

    nets = {"efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
            "b0_g16_bn": timm_b0_g16}
    for res in a.res:
        for arch, make in nets.items():
            torch.manual_seed(0)
            stock = make().train()
            sides = {"pytorch_nchw": (stock, torch.contiguous_format),
                     "pytorch_channels_last": (copy.deepcopy(stock).to(
                         memory_format=torch.channels_last), torch.channels_last),
                     "effnet_swapped": (et.swap_modules(copy.deepcopy(stock)),
                                        torch.channels_last),
                     "effnet_model": (et.efficientnet(arch, stock.state_dict()).train(),
                                      torch.channels_last)}
            x = torch.randn(a.batch, 3, res, res)
            y = torch.randint(0, 1000, (a.batch,))
            fns = {}
            for side, (model, fmt) in sides.items():
                opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
                xs = x.contiguous(memory_format=fmt)

                def step(model=model, opt=opt, xs=xs):
                    opt.zero_grad(set_to_none=True)
                    F.cross_entropy(model(xs), y).backward()
                    opt.step()
                step()  # warm-up: plans, packed layouts, allocator
                fns[side] = step
            if a.native:
                fns["effnet_native"] = native_step(a, arch, res)
            best = best_of(None, fns, a.rounds)
            if a.native:
                best["effnet_native"] = min(native_step.last[(arch, res)])
            stock_best = min(best["pytorch_nchw"], best["pytorch_channels_last"])
            for side, sec in best.items():
                print(json.dumps(dict(bench="train_step", arch=arch, res=res,
                                      batch=a.batch, threads=a.threads, impl=side,
                                      ms=round(sec * 1e3, 1),
                                      img_per_s=round(a.batch / sec, 2))), flush=True)
            print(json.dumps(dict(bench="train_step", arch=arch, res=res,
                                  swapped_vs_best_pytorch=round(
                                      stock_best / best["effnet_swapped"], 3),
                                  model_vs_best_pytorch=round(
                                      stock_best / best["effnet_model"], 3),
                                  native_vs_best_pytorch=round(
                                      stock_best / best["effnet_native"], 3)
                                  if a.native else None)),
                  flush=True)


def native_step(a, arch, res):
    """A round of ``effnet bench model`` (the Rust network, no Python) for the same
    step; its own timing of one step (after its warm-up) is kept in ``last``."""
    import subprocess

    cmd = [a.native, "bench", "model", "--arch", arch, "--res", str(res), "--batch",
           str(a.batch), "--threads", str(a.threads), "--modes", "train", "--iters",
           "1", "--json"]
    times = native_step.last.setdefault((arch, res), [])

    def run():
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        times.append(a.batch / row["img_per_s"])
    return run


native_step.last = {}


def layers(kinds):
    for line in open(SUITE):
        if line.startswith("#") or not line.strip():
            continue
        name, ci, co, h, w, k, s, gs = line.split()
        if name.split("_")[0] in kinds:
            yield name, int(ci), int(co), int(h), int(w), int(k), int(s), int(gs)


def ops(a):
    """Conv2d forward + backward (data and weight) per B0 layer, effnet vs PyTorch
    (the faster of NCHW and channels-last)."""
    for name, ci, co, h, w, k, s, gs in layers(("dw", "g16")):
        groups = ci // gs
        ref = torch.nn.Conv2d(ci, co, k, s, k // 2, groups=groups, bias=False)
        ours = et.Conv2d(ci, co, k, s, k // 2, groups=groups, bias=False)
        ours.weight = ref.weight
        fns = {}
        for side, mod, fmt in (("pytorch_nchw", ref, torch.contiguous_format),
                               ("pytorch_channels_last", copy.deepcopy(ref).to(
                                   memory_format=torch.channels_last),
                                torch.channels_last),
                               ("effnet", ours, torch.channels_last)):
            x = torch.randn(a.batch, ci, h, w).contiguous(memory_format=fmt)
            x.requires_grad_(True)
            dy = torch.randn_like(mod(x)).contiguous(memory_format=fmt)

            def f(mod=mod, x=x, dy=dy):
                for _ in range(a.reps):
                    torch.autograd.grad(mod(x), [x, mod.weight], dy)
            f()
            fns[side] = f
        best = best_of(None, fns, a.rounds)
        stock = min(best["pytorch_nchw"], best["pytorch_channels_last"])
        print(json.dumps(dict(bench="conv_fwd_bwd", name=name, batch=a.batch,
                              threads=a.threads,
                              pytorch_ms=round(stock / a.reps * 1e3, 3),
                              effnet_ms=round(best["effnet"] / a.reps * 1e3, 3),
                              speedup=round(stock / best["effnet"], 2))), flush=True)


def overhead(a):
    """The cost of the Python path: a tiny op through the module against the same C
    function called directly through ctypes with ready arguments."""
    from effnet._lib import context, lib

    n = 20000
    x = torch.randn(1, 8, 1, 1).contiguous(memory_format=torch.channels_last)
    conv = et.Conv2d(8, 8, 1, bias=False)
    act = et.SiLU()
    with torch.no_grad():
        conv(x)
    plan = conv._plans[(1, 1, 1)]
    y = torch.empty_like(x)
    ctx = context()
    packed = plan.packed
    fn = lib.effnet_conv_forward_packed
    xp, pp, yp = x.data_ptr(), packed.data_ptr(), y.data_ptr()
    sig = lib.effnet_activation_forward

    def raw_conv():
        for _ in range(n):
            fn(ctx, plan.ptr, xp, plan.x_len, pp, plan.packed_bytes, None, 0, yp,
               plan.y_len, None, 0)

    def module_conv():
        with torch.no_grad():
            for _ in range(n):
                conv(x)

    xg = x.clone().requires_grad_(True)

    def module_conv_autograd():
        for _ in range(n // 4):
            conv(xg).backward(y)

    def raw_act():
        for _ in range(n):
            sig(ctx, 3, xp, yp, 8)

    def module_act():
        with torch.no_grad():
            for _ in range(n):
                act(x)

    def torch_act():
        with torch.no_grad():
            for _ in range(n):
                F.silu(x)

    fns = dict(raw_conv=raw_conv, module_conv_no_grad=module_conv,
               module_conv_fwd_bwd=module_conv_autograd, raw_silu=raw_act,
               module_silu_no_grad=module_act, torch_silu=torch_act)
    best = best_of(None, fns, a.rounds)
    for k, sec in best.items():
        calls = n // 4 if k == "module_conv_fwd_bwd" else n
        print(json.dumps(dict(bench="overhead", what=k,
                              us_per_call=round(sec / calls * 1e6, 2))), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["steps", "ops", "overhead"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--res", type=int, nargs="+", default=[160, 224])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="ops: calls per timing")
    ap.add_argument("--native", help="steps: also time `effnet bench model` with this "
                    "effnet binary (target/release/effnet)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    effnet.set_num_threads(a.threads)
    {"steps": steps, "ops": ops, "overhead": overhead}[a.what](a)


if __name__ == "__main__":
    main()
