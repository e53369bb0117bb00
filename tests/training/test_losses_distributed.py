"""NT-Xent with negatives gathered from every process, on a real two-process gloo group."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from giga_ssl_hf.training.losses import NTXentLoss


def _worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 8, 4, generator=generator)  # the global batch: 8 slides, 2 views
    local = slice(4 * rank, 4 * rank + 4)
    mine_first = first[local].clone().requires_grad_(True)
    mine_second = second[local].clone().requires_grad_(True)
    loss = NTXentLoss(0.5, gather_across_processes=True)(mine_first, mine_second)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": mine_first.grad}, f"{path}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_negatives_equal_the_global_batch_loss(tmp_path):
    mp.spawn(_worker, args=(2, 29533, str(tmp_path)), nprocs=2, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(2, 8, 4, generator=generator)
    first.requires_grad_(True)
    expected = NTXentLoss(0.5)(first, second)
    expected.backward()
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["loss"], expected.detach())
        # Each process holds world_size x the global loss's gradient for its own slides' projections: DDP's
        # average of the parameter gradients over the 2 processes then gives exactly the global gradient.
        torch.testing.assert_close(result["grad"], 2 * first.grad[4 * rank : 4 * rank + 4])
