"""Sharded KnowEdit evaluation under ``torchrun`` / ``accelerate launch``.

Each process (rank) takes every ``world``-th chunk of records, writes its own resumable JSONL
(``<stem>.rank<r>-of-<w>.jsonl``) and, once all ranks are done, rank 0 merges the lines into the
run's JSONL, sorted by record, and writes the summary and report as a single-process run would.
Records are edited and scored independently in single and batch mode, so the merged lines are the
ones a single process writes. Sequential runs accumulate edits in order and cannot be sharded.

The ranks meet through ``torch.distributed`` (the gloo backend: CPU collectives, also beside
GPUs); the launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``)
says where.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["Shard", "current_shard"]


@dataclass
class Shard:
    rank: int
    world: int
    _owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, chunk: int) -> bool:
        return chunk % self.world == self.rank

    def part_path(self, jsonl: Path, rank: int | None = None) -> Path:
        r = self.rank if rank is None else rank
        return jsonl.with_name(f"{jsonl.stem}.rank{r}-of-{self.world}.jsonl")

    def start(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=self.rank, world_size=self.world)
            self._owns_group = True

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        """``obj`` of every rank, in rank order (on every rank)."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        import torch.distributed as dist

        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()

    def merge(self, jsonl: Path, key_fields: Sequence[str]) -> None:
        """Rank 0: the lines of every rank's part (and of the run's JSONL, if it has some) into the
        run's JSONL, sorted by key, replacing it atomically."""
        from .resultlog import read_result_lines

        done: dict[tuple, dict] = {}
        for p in [jsonl] + [self.part_path(jsonl, r) for r in range(self.world)]:
            got, _, _ = read_result_lines(p, key_fields)
            done.update(got)
        tmp = jsonl.with_suffix(".merge-tmp")
        tmp.write_text("".join(json.dumps(done[k], ensure_ascii=False) + "\n" for k in sorted(done)), encoding="utf-8")
        os.replace(tmp, jsonl)


def current_shard() -> Shard | None:
    """The launcher's rank and world size, or None for a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Shard(int(os.environ.get("RANK", "0")), world)
