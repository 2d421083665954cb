"""Exact speed-ups and the one private switch that turns them off.

Every speed-up here gives the same result as the plain computation (to float tolerance), so none is
a hyperparameter: the value optimisation's prefix cache, its replay of the blocks below the patched
module and its batching of facts (:mod:`editwrap.ops.values`), and the fine-tuning fast path of
FT, GRACE and WISE (:func:`editwrap.ops.train.target_loss_step`). Tests compare each against the
plain path inside ``with exact_paths(...)``. The setting is per thread (a context variable).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from typing import Any, Iterator

__all__ = ["ExactPaths", "exact_paths", "current", "RETIRED_HPARAMS"]


@dataclasses.dataclass(frozen=True)
class ExactPaths:
    #: value optimisation: run the positions before the subject once per edit (KV cache)
    prefix_cache: bool = True
    #: value optimisation: run the blocks below the patched module once and replay their outputs
    replay_lower: bool = True
    #: value optimisation: facts optimised together in one batch (bounds memory: rows = facts × (templates + 1))
    batch_facts: int = 8
    #: FT, GRACE, WISE: replay the blocks below the trained module, project only the target positions
    fast_path: bool = True


_CURRENT: contextvars.ContextVar[ExactPaths] = contextvars.ContextVar("editwrap_exact_paths", default=ExactPaths())

#: the 0.1/0.2 hyperparameters that switched these speed-ups: saved stacks and run records that carry
#: them still load, and their values are ignored (they never changed a result)
RETIRED_HPARAMS = frozenset({"v_prefix_cache", "v_replay_lower", "v_batch_facts", "fast_path"})


def current() -> ExactPaths:
    """The speed-ups in force in this thread."""
    return _CURRENT.get()


@contextlib.contextmanager
def exact_paths(**changes: Any) -> Iterator[ExactPaths]:
    """Change the speed-ups inside the block, e.g. ``exact_paths(prefix_cache=False, batch_facts=1)``
    for the plain value optimisation (unknown names are errors)."""
    new = dataclasses.replace(current(), **changes)
    if new.batch_facts < 1:
        raise ValueError(f"batch_facts must be >= 1, got {new.batch_facts}")
    token = _CURRENT.set(new)
    try:
        yield new
    finally:
        _CURRENT.reset(token)
