#!/usr/bin/env python3
"""Data-parallel training of ``b0_g16_lnpn`` (G16 EfficientNet-B0 with LayerNorm +
Proxy Norm, built from effnet's modules) with ``DistributedDataParallel`` on gloo.

    pip install ./python
    torchrun --nproc_per_node 2 python/examples/ddp_train.py --steps 5 --check

Each rank trains on its shard of one global batch of synthetic images. Proxy Norm
normalizes per sample, so (unlike BatchNorm) the averaged gradients of the ranks are
those of one process on the whole global batch: ``--check`` recomputes the first
step in one process on rank 0 and prints the largest relative difference.
"""

import argparse
import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import effnet.torch as et

ARCH = "b0_g16_lnpn"
CLASSES = 10


def make_model(seed=0):
    """The network with the same initial weights on every rank (dropout off, so that
    the forward is deterministic)."""
    torch.manual_seed(seed)
    return et.efficientnet(ARCH, num_classes=CLASSES, drop_rate=0.0)


def global_batch(step, size, res):
    """Synthetic images (channels-last) and labels of step ``step``, the same on
    every rank."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(size, 3, res, res, generator=g)
    y = torch.randint(0, CLASSES, (size,), generator=g)
    return x.contiguous(memory_format=torch.channels_last), y


def train(rank, world, steps, per_rank, res, lr=0.02, log=None):
    """Trains ``steps`` SGD steps on shards of ``per_rank`` images (DDP when
    ``world > 1``); returns the first step's gradients (name → tensor) and the
    losses."""
    model = make_model()
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    first, losses = None, []
    for step in range(steps):
        x, y = global_batch(step, per_rank * world, res)
        x, y = x[rank * per_rank:(rank + 1) * per_rank], y[rank * per_rank:
                                                           (rank + 1) * per_rank]
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        if first is None:
            first = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        losses.append(loss.item())
        if log:
            log(f"rank {rank} step {step} loss {loss.item():.4f}")
    return first, losses


def max_rel_diff(a, b):
    """The largest per-tensor relative difference of two gradient dicts, relative to
    the larger of the tensor's norm and 1e-3 of the largest norm."""
    scale = max(t.norm().item() for t in b.values())
    return max((a[n] - b[n]).norm().item() / max(b[n].norm().item(), 1e-3 * scale)
               for n in b)


def free_port():
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_worker(rank, world, port, per_rank, res, out_path):
    """Entry point of one process under ``torch.multiprocessing.spawn``: one DDP step,
    rank 0 saves the gradients to ``out_path``."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        grads, _ = train(rank, world, 1, per_rank, res)
        if rank == 0:
            torch.save(grads, out_path)
    finally:
        dist.destroy_process_group()


def main():
    """torchrun entry point (also runs as one process without torchrun)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch", type=int, default=4, help="images per rank")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="threads per rank")
    p.add_argument("--check", action="store_true",
                   help="compare the first step with one process on the global batch")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    world, rank = 1, 0
    if "RANK" in os.environ:
        dist.init_process_group("gloo")  # torchrun's env:// rendezvous
        world, rank = dist.get_world_size(), dist.get_rank()
    grads, losses = train(rank, world, args.steps, args.batch, args.res, log=print)
    if args.check and rank == 0:
        ref, _ = train(0, 1, 1, args.batch * world, args.res)
        print(f"first-step gradients vs one process on the global batch: max relative "
              f"difference {max_rel_diff(grads, ref):.2e}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
