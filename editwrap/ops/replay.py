"""Run the frozen blocks below an edited module once per edit, then replay their outputs.

Every method that optimises something at one layer (a value vector added to a module's output,
a weight change of one projection) runs the same inputs through the blocks below that layer at
every step; their outputs cannot change during the optimisation. :class:`ReplayBelow` records
them in the first step and makes the blocks return them afterwards (exact, not approximate).
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch

from ..arch import arch_of

__all__ = ["ReplayBelow", "LowerCache", "replay_steps"]


class ReplayBelow:
    """The blocks below the patched module see the same inputs every step (the tokens from the
    subject on, after a fixed prefix): run them once, then return their recorded outputs.

    ``record()`` captures each block's output in the first step; ``replay(rows)`` makes the
    blocks return it (only ``rows`` of it when some rows have left the batch; all when None)
    without computing. Forward hooks on a replayed block itself would still run (twice, in
    effect), so a replay is only used when :meth:`safe` says there are none."""

    def __init__(self, host: Any, module: str, top_only: bool = False) -> None:
        arch = arch_of(host)
        layer = next((i for i in range(arch.n_layers) if module == arch.block_at(i)
                      or module.startswith(arch.block_at(i) + ".")), None)
        # the patched block itself replays too when the patch is on its output (its hooks add δ)
        n = 0 if layer is None else layer + (module == arch.block_at(layer))
        self.blocks = [host.get_submodule(arch.block_at(i)) for i in range(n)]
        self.outputs: list[Any] = []
        # top_only: keep only the highest block's output and let every block below return it too
        # (each replayed block ignores its input, so only the last one's output matters)
        self.top_only = top_only

    def safe(self) -> bool:
        """Replay is exact when no hook sits on a replayed block itself (it would run on the recorded
        output again); hooks inside the blocks (side-cars, codebooks, adapters) ran when recording."""
        return not any(b._forward_hooks or b._forward_pre_hooks for b in self.blocks)

    @classmethod
    def lowest(cls, host: Any, modules: Sequence[str], top_only: bool = False) -> "ReplayBelow":
        """The replay below the lowest of ``modules``: the blocks none of them can change."""
        return min((cls(host, m, top_only) for m in modules), key=lambda r: len(r.blocks))

    @contextlib.contextmanager
    def record(self) -> Iterator[None]:
        """Keep what each block's own ``forward`` returns (before any hook, e.g. the δ patch)."""
        def recording(fwd: Any) -> Any:
            def run(*a: Any, **k: Any) -> Any:
                out = fwd(*a, **k)
                self.outputs.append(tuple(o.detach() if isinstance(o, torch.Tensor) else o for o in out)
                                    if isinstance(out, tuple) else out.detach())
                return out
            return run

        recorded = self.blocks[-1:] if self.top_only else self.blocks
        with _forwards(recorded, [recording(b.forward) for b in recorded]):
            yield

    @contextlib.contextmanager
    def replay(self, rows: list[int] | None = None) -> Iterator[None]:
        def fixed(out: Any) -> Any:
            if rows is None:
                return out
            if isinstance(out, tuple):
                return (out[0][rows], *out[1:])
            return out[rows]

        outputs = self.outputs * len(self.blocks) if self.top_only else self.outputs
        with _forwards(self.blocks, [(lambda o: lambda *_a, **_k: o)(fixed(out)) for out in outputs]):
            yield


def replay_steps(host: Any, module: str, enabled: bool = True) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """For an optimisation at ``module`` whose every step runs the same inputs: a function giving
    the context of each step's forward (record in the first, replay after; a no-op when not
    ``enabled`` or when a hook sits on a block below, see :meth:`ReplayBelow.safe`)."""
    replay = ReplayBelow(host, module) if enabled else None
    replay = replay if replay is not None and replay.safe() else None
    calls = [0]

    def step() -> contextlib.AbstractContextManager[None]:
        calls[0] += 1
        if replay is None:
            return contextlib.nullcontext()
        return replay.record() if calls[0] == 1 else replay.replay()
    return step


class LowerCache:
    """The blocks below the lowest of ``modules`` run once per batch of texts across several reads
    of the same texts (e.g. the keys of each layer of a MEMIT spread, whose updates all sit in
    ``modules``): the first read records the highest lower block's output, later reads replay it.

    Exact while nothing below those modules changes between the reads (the caller's promise) and
    only side-car entries are on the stack (forward hooks on the replayed blocks still run)."""

    def __init__(self, host: Any, modules: Sequence[str]) -> None:
        self.host, self.modules = host, tuple(modules)
        self.by_batch: dict[tuple[str, ...], ReplayBelow] = {}

    def around(self, texts: Sequence[str]) -> contextlib.AbstractContextManager[None]:
        """Context for one forward over ``texts``: record it the first time, replay afterwards."""
        key = tuple(texts)
        r = self.by_batch.get(key)
        if r is None:
            r = self.by_batch[key] = ReplayBelow.lowest(self.host, self.modules, top_only=True)
            return r.record()
        return r.replay()


@contextlib.contextmanager
def _forwards(modules: list[Any], fns: list[Any]) -> Iterator[None]:
    """Set ``module.forward`` for a while; restore what was there (accelerate keeps its dispatch
    hooks as an instance ``forward``, which must survive)."""
    saved = [m.__dict__.get("forward") for m in modules]
    try:
        for m, fn in zip(modules, fns):
            m.forward = fn
        yield
    finally:
        for m, old in zip(modules, saved):
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = old
