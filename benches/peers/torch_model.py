"""PyTorch CPU (timm) whole-model throughput: the peer of `effnet bench model`.

Same contract as `effnet bench model --json`: one JSON line per (arch, mode, res),
  {"arch", "mode": "infer"|"train", "res", "batch", "threads", "img_per_s",
   "peak_rss_mb", "impl": "pytorch"}

  python3 torch_model.py --arch efficientnet_b0 --res 224 160 > torch_model.jsonl
  python3 torch_model.py --arch b0_g16_bn --res 224

Architectures:
  efficientnet_b0  timm's model as registered.
  b0_g16_bn        timm's EfficientNet built from the same block strings with expansion
                   4 instead of 6 and group_size=16 in every spatial conv (groups =
                   C // 16), as effnet's `b0_g16_bn` (5,913,796 parameters, checked).
  efficientnet_tiny, tf_efficientnet_tiny: the quarter-width, quarter-depth test nets.

How it measures (DESIGN.md, "the machine and the peers"):
  - channels-last model and input, `torch.set_num_threads(threads)`, one interop thread;
  - every (arch, res, mode) runs in a fresh child process, so `peak_rss_mb` (the
    child's maximum resident set, from getrusage) is that mode's own peak;
  - inference: one full training step (forward, backward, SGD update) first, because a
    PyTorch process that has never run a backward pass runs CPU inference at about 40 %
    of its later speed; then eval mode under `torch.inference_mode()`. Its peak RSS
    therefore includes that one training step (use --warm-batch 1 to make it small);
  - training: forward, mean cross-entropy, backward, SGD (momentum 0.9) step, in train
    mode (batch-norm batch statistics, dropout and drop-path as timm sets them);
  - `--warmup` untimed iterations, then at least `--iters` timed iterations and at
    least `--min-time` seconds; img/s = images / elapsed wall time.
Random normal inputs and random labels; the numbers do not depend on the data.

On a shared, oversubscribed machine (more runnable threads than cores) OpenMP's
spin-waiting barriers collapse PyTorch's throughput (measured here: 6 img/s instead of
39 for B0 inference at 160 under a load of 7 on 2 cores); `--passive` runs the children
with OMP_WAIT_POLICY=PASSIVE, which is PyTorch's best on such a machine. On a quiet
machine leave it off. Compare against effnet only in runs made side by side.

Needs torch and timm (a virtual environment; never a dependency of the project).
"""
import argparse, json, os, resource, subprocess, sys, time
from functools import partial

G16_ARCH_DEF = [
    ["ds_r1_k3_s1_e1_c16_se0.25"],
    ["ir_r2_k3_s2_e4_c24_se0.25"],
    ["ir_r2_k5_s2_e4_c40_se0.25"],
    ["ir_r3_k3_s2_e4_c80_se0.25"],
    ["ir_r3_k5_s1_e4_c112_se0.25"],
    ["ir_r4_k5_s2_e4_c192_se0.25"],
    ["ir_r1_k3_s1_e4_c320_se0.25"],
]


def build(arch, num_classes=1000):
    """The timm model for one of effnet's architecture names."""
    import torch
    from timm.models import efficientnet as ef
    from timm.models._efficientnet_builder import (
        decode_arch_def, round_channels, resolve_act_layer, resolve_bn_args)

    if arch == "efficientnet_b0":
        return ef._gen_efficientnet("efficientnet_b0", num_classes=num_classes)
    if arch == "efficientnet_tiny":
        return ef._gen_efficientnet("efficientnet_b0", channel_multiplier=0.25,
                                    depth_multiplier=0.25, num_classes=num_classes)
    if arch == "tf_efficientnet_tiny":
        return ef._gen_efficientnet("tf_efficientnet_b0", channel_multiplier=0.25,
                                    depth_multiplier=0.25, num_classes=num_classes,
                                    bn_eps=ef.BN_EPS_TF_DEFAULT, pad_type="same")
    if arch == "b0_g16_bn":
        # _gen_efficientnet's construction, with the G16 block strings.
        kw = {}
        round_chs = partial(round_channels, multiplier=1.0, divisor=8)
        return ef.EfficientNet(
            block_args=decode_arch_def(G16_ARCH_DEF, 1.0, group_size=16),
            num_features=round_chs(1280), stem_size=32, round_chs_fn=round_chs,
            act_layer=resolve_act_layer(kw, "swish"),
            norm_layer=partial(torch.nn.BatchNorm2d, **resolve_bn_args(kw)),
            num_classes=num_classes)
    raise SystemExit(f"unknown --arch {arch} (efficientnet_b0, b0_g16_bn, "
                     "efficientnet_tiny, tf_efficientnet_tiny)")


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(a):
    """Measures one (arch, res, mode) in this process and prints its JSON line."""
    import torch
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    cl = torch.channels_last
    model = build(a.arch).to(memory_format=cl)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()

    def batch(n):
        x = torch.randn(n, 3, a.res, a.res).contiguous(memory_format=cl)
        y = torch.randint(0, 1000, (n,))
        return x, y

    def train_step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    x, y = batch(a.batch)
    if a.mode == "infer":
        model.train()
        train_step(*batch(a.warm_batch or a.batch))
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)
    else:
        model.train()

        def step():
            train_step(x, y)

    for _ in range(a.warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while n < a.iters or time.perf_counter() - t0 < a.min_time:
        step()
        n += 1
    dt = time.perf_counter() - t0
    print(json.dumps(dict(arch=a.arch, mode=a.mode, res=a.res, batch=a.batch,
                          threads=a.threads, img_per_s=round(n * a.batch / dt, 2),
                          peak_rss_mb=round(peak_rss_mb(), 1), impl="pytorch")),
          flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", nargs="+", default=["efficientnet_b0"])
    ap.add_argument("--res", type=int, nargs="+", default=[224, 160])
    ap.add_argument("--mode", nargs="+", default=["infer", "train"],
                    choices=["infer", "train"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations")
    ap.add_argument("--iters", type=int, default=5, help="at least this many timed")
    ap.add_argument("--min-time", type=float, default=5.0, help="and at least this long (s)")
    ap.add_argument("--warm-batch", type=int, default=0,
                    help="batch of the training step run before inference (0: --batch)")
    ap.add_argument("--passive", action="store_true",
                    help="run with OMP_WAIT_POLICY=PASSIVE (for a loaded machine)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        a.arch, a.res, a.mode = a.arch[0], a.res[0], a.mode[0]
        return child(a)
    for arch in a.arch:
        for res in a.res:
            for mode in a.mode:
                cmd = [sys.executable, os.path.abspath(__file__), "--child",
                       "--arch", arch, "--res", str(res), "--mode", mode,
                       "--batch", str(a.batch), "--threads", str(a.threads),
                       "--warmup", str(a.warmup), "--iters", str(a.iters),
                       "--min-time", str(a.min_time), "--warm-batch", str(a.warm_batch)]
                env = dict(os.environ)
                if a.passive:
                    env["OMP_WAIT_POLICY"] = "PASSIVE"
                r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
                if r.returncode != 0:
                    sys.exit(f"{arch} {mode} at {res}: child failed ({r.returncode})")
                sys.stdout.write(r.stdout)
                sys.stdout.flush()


if __name__ == "__main__":
    main()
