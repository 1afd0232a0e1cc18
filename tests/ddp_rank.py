"""One rank of the weighted-loss equivalence test (tests/test_training.py runs two of these as fresh processes);
it also checks that every rank takes rank 0's checkpoint decision, and exits 3 where one does not.

Usage: python ddp_rank.py RANK WORLD INIT_FILE OUT_FILE
"""

import sys

import torch
import torch.distributed as dist

from raydistill.train.loop import rank_zero_decides
from raydistill.train.losses import per_sample_loss, weighted_mean


def batch_and_model():
    """A fixed batch with very unequal weights (unequal per worker too) and a seeded linear model."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)
    w = torch.tensor([0.9, 0.01, 0.3, 0.02, 0.5, 0.05, 0.2, 0.02])
    torch.manual_seed(1)
    return x, y, w, torch.nn.Linear(5, 3)


def main(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, y, w, model = batch_and_model()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = slice(rank, None, world)
    weighted_mean(per_sample_loss(ddp(x[rows]), y[rows], None, 1.0), w[rows]).backward()
    if rank == 0:
        torch.save([p.grad for p in model.parameters()], out)
    decisions = [rank_zero_decides(rank == 0, torch.device("cpu")), rank_zero_decides(rank != 0, torch.device("cpu"))]
    dist.destroy_process_group()
    if decisions != [True, False]:
        sys.exit(3)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
