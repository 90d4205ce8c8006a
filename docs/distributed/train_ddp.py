"""Continue a skscratch run in PyTorch on several processes (DDP), and bring the weights back.

    torchrun --standalone --nproc_per_node 2 docs/distributed/train_ddp.py \
        runs/default/checkpoint.npz --data ../shared/data/cifar-10-python.tar.gz \
        --epochs 1 --lr 0.01 --out runs/ddp

Every process builds the PyTorch twin (skscratch.interop.torch) of the checkpoint's network with
its weights and trains it under DistributedDataParallel on the gloo backend (CPUs). Each batch
of B images, drawn as skscratch draws them (the run's seed, its crops, flips and cutout), is split
across the W processes, B/W images each; DDP averages the gradients, so every process takes the
same step, and its buffers (batch norm's running statistics) are those of process 0. The
optimiser is the run's: SGD with its momentum, Nesterov and weight decay (on matrices only), its
label smoothing, at the constant learning rate --lr. Batch norm normalises over each process's
B/W images, so W processes do not compute exactly what one would.

When the epochs are done, the processes check that they hold the same weights, and process 0
writes OUT/checkpoint.npz: a skscratch checkpoint of the trained network, with the run's
recorded settings, which `skscratch evaluate` and `skscratch analyze` read.

On several machines, run the same script on each with torchrun's rendezvous options instead of
--standalone, for two machines of two processes each:

    torchrun --nnodes 2 --nproc_per_node 2 --node_rank 0 --master_addr HOST0 --master_port 29500 ...
    torchrun --nnodes 2 --nproc_per_node 2 --node_rank 1 --master_addr HOST0 --master_port 29500 ...

with the data at the same path on both (HOST0 is the machine of node 0, reachable from the other).

Needs PyTorch (`pip install torch`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from skscratch.augmentation import augment
from skscratch.checkpoint import load_checkpoint, save_checkpoint
from skscratch.data import load_cifar10, normalize
from skscratch.interop.torch import from_torch, to_torch
from skscratch.runs import load_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="the skscratch run's checkpoint.npz to continue")
    parser.add_argument("--data", help="cifar-10-python.tar.gz or its folder")
    parser.add_argument("--epochs", type=int, default=1, help="default: %(default)s")
    parser.add_argument("--lr", type=float, default=0.01, help="default: %(default)s")
    parser.add_argument("--batch-size", type=int, help="B (default: the run's)")
    parser.add_argument("--out", required=True, help="folder for the new checkpoint.npz")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)  # one core per process

    model, mean, std, config = load_run(args.checkpoint, backend="reference")
    batch = args.batch_size or config.batch_size
    if batch % world:
        raise SystemExit(f"the batch of {batch} does not split over {world} processes")
    net = DistributedDataParallel(to_torch(model).train())
    decayed = [p for p in net.parameters() if p.ndim > 1]  # skscratch.optim decays matrices only
    others = [p for p in net.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decayed, "weight_decay": config.weight_decay}, {"params": others}],
        lr=args.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )
    data = load_cifar10(args.data)
    x_train, y_train = data.x_train[: config.subset], data.y_train[: config.subset]
    n_batches = len(x_train) // batch
    for epoch in range(args.epochs):
        # The same order and augmentation on every process; each keeps its share of a batch.
        order = np.random.default_rng([config.seed, 101, epoch]).permutation(len(x_train))
        total = 0.0
        for b in range(n_batches):
            idx = order[b * batch : (b + 1) * batch]
            xb = x_train[idx]
            if config.augment:
                rng = np.random.default_rng([config.seed, 102, epoch, b])
                xb = augment(xb, rng, cutout=config.cutout)
            mine = slice(rank, None, world)
            logits = net(torch.from_numpy(normalize(xb[mine], mean, std)))
            loss = F.cross_entropy(
                logits,
                torch.from_numpy(y_train[idx][mine].astype(np.int64)),
                label_smoothing=config.label_smoothing,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients over the processes here
            optimizer.step()
            total += loss.item()
        if rank == 0:
            print(f"epoch {epoch + 1}: mean loss on process 0's shares {total / n_batches:.4f}")

    # Every process must hold the same weights: compare each with process 0's.
    flat = torch.cat([p.detach().reshape(-1) for p in net.module.parameters()])
    first = flat.clone()
    dist.broadcast(first, src=0)
    differs = torch.tensor([float((flat != first).any())])
    dist.all_reduce(differs)
    if differs.item():
        raise SystemExit("the processes ended with different weights")
    if rank == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        meta = load_checkpoint(Path(args.checkpoint))[0]
        meta.pop("format_version", None)
        meta["continued"] = {"in": "PyTorch DDP", "processes": world, "epochs": args.epochs,
                             "lr": args.lr, "batch_size": batch}  # fmt: skip
        trained = from_torch(net.module).astype(np.float32)
        save_checkpoint(out / "checkpoint.npz", meta, trained.state_dict(), {})
        print(f"the same weights on {world} processes; written to {out / 'checkpoint.npz'}")
        print(json.dumps(meta["continued"]))
    dist.barrier()  # no process leaves the group while process 0 is still writing
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
