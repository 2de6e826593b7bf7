"""The processes of a batch run: one alone, or the ranks torchrun starts.

This is the only module of smoothgrad that uses ``torch.distributed``.

Example:
    >>> world = World(torch.device("cpu"))  # no torchrun: rank 0 of 1
    >>> world.rank, world.size, world.gather("x")
    (0, 1, ['x'])
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch

__all__ = ["World"]


class World:
    """This process's place among the torchrun ranks (one process alone: rank 0 of 1)."""

    def __init__(self, device: torch.device) -> None:
        self.size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        self.device = device
        if device.type == "cuda" and self.size > 1:
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
        if self.size > 1:
            import torch.distributed as dist

            # long: ranks that finish early wait here for the slowest; torchrun stops every
            # rank when one fails, so nothing hangs on a dead peer
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    timeout=timedelta(hours=24))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value`, on every rank."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (waits for all of them)."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

