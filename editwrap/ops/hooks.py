"""Small module-hook toolkit (in the spirit of ROME's ``nethook``), written once for all methods.

Every helper is a context manager that removes what it installed on exit, even on error, so a
method that raises leaves no hook behind (edits are transactional).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

__all__ = ["get_module", "capture", "patch_output", "frozen", "stop_after", "first_tensor", "replace_first",
           "ForwardMask",
           "forward_root", "padding_rows"]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """Look a submodule up by its dotted name, with an error that lists close names."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n.split(".")[-1] == name.split(".")[-1]][:5]
        raise KeyError(f"model has no module {name!r}; similar: {names}") from None


def first_tensor(out: object) -> torch.Tensor:
    """Blocks return a tensor or a tuple whose first item is the hidden state."""
    return out[0] if isinstance(out, (tuple, list)) else out  # type: ignore[return-value]


def replace_first(out: object, new: torch.Tensor) -> object:
    if isinstance(out, tuple):
        return (new, *out[1:])
    if isinstance(out, list):
        return [new, *out[1:]]
    return new


@contextlib.contextmanager
def capture(model: nn.Module, names: list[str], *, inputs: bool = True, outputs: bool = True,
            detach: bool = True) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Record the first positional input and/or the (first) output of the named modules."""
    store: dict[str, dict[str, torch.Tensor]] = {n: {} for n in names}
    handles = []

    def make(n: str) -> Callable:
        def hook(_m: nn.Module, args: tuple, out: object) -> None:
            if inputs and args:
                store[n]["input"] = args[0].detach() if detach else args[0]
            if outputs:
                t = first_tensor(out)
                store[n]["output"] = t.detach() if detach else t
        return hook

    try:
        for n in names:
            handles.append(get_module(model, n).register_forward_hook(make(n)))
        yield store
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def patch_output(model: nn.Module, name: str, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> Iterator[None]:
    """Replace the (first) output of one module by ``fn(output, input)`` while the context is open."""
    def hook(_m: nn.Module, args: tuple, out: object) -> object:
        return replace_first(out, fn(first_tensor(out), args[0] if args else None))

    h = get_module(model, name).register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()


class _StopForward(Exception):
    pass


@contextlib.contextmanager
def stop_after(model: nn.Module, names: list[str]) -> Iterator[Callable[..., None]]:
    """Yield ``run(**inputs)``: a forward of ``model`` aborted once every named module has run.

    The layers above the deepest one (and the LM head over every position) do not change what
    those modules see, so a caller that only reads them (keys, covariance statistics) skips most
    of the cost: ROME's layer 5 of 30 is ~5x cheaper, and the head alone is a fifth of a forward.
    Only for reading: an aborted forward returns nothing and skips hooks on the model itself.
    """
    seen: set[str] = set()

    def make(n: str) -> Callable:
        def hook(*_: object) -> None:
            seen.add(n)
            if len(seen) == len(names):
                raise _StopForward
        return hook

    def run(**inputs: object) -> None:
        seen.clear()
        try:
            model(**inputs)
        except _StopForward:
            pass

    handles = []
    try:
        for n in names:
            handles.append(get_module(model, n).register_forward_hook(make(n)))
        yield run
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Turn off gradients for every model parameter (and restore the flags after).

    Methods optimise side-car tensors only; freezing the model keeps ``.grad`` of real weights
    untouched and avoids computing gradients nobody reads.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)


def padding_rows(mask: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """(B, T) float weights of the real tokens among the ``T`` positions of ``x`` (B, T, …): the
    last ``T`` columns of the forward's 2-D attention mask (KV-cached steps see only new tokens),
    or all ones when there is no mask of a matching shape."""
    bsz, t = x.shape[0], x.shape[1]
    if mask is not None and mask.dim() == 2 and mask.shape[0] == bsz and mask.shape[1] >= t:
        return mask[:, -t:].to(x.device, torch.float32)
    return torch.ones(bsz, t, device=x.device)


def forward_root(host: nn.Module) -> nn.Module:
    """Where hooks that read a whole forward's arguments (attention mask, KV cache) belong.

    The host's backbone (``host.base_model``) receives the same mask and cache as the host, and
    hooking it leaves the host hook-free, so a loss may run the backbone and project only the
    positions it reads (``ops.values.logits_at``). A host without a separate backbone is its own root.
    """
    backbone = getattr(host, "base_model", None)
    return backbone if isinstance(backbone, nn.Module) and backbone is not host else host


class ForwardMask:
    """The attention mask of the host model's forward in progress, for hooks deeper inside.

    A hook on an inner module sees hidden states only; anything it computes per sequence (a
    mean over tokens, a routing decision) must skip padding, or a row's output would depend on
    what it was batched with. Pre/post hooks keep the mask for one forward, on ``forward_root``.
    """

    def __init__(self, host: nn.Module) -> None:
        self.host, self.mask = host, None
        self.target = forward_root(host)
        self._handles: list = []

    def attach(self) -> None:
        if not self._handles:
            self._handles = [self.target.register_forward_pre_hook(self._pre, with_kwargs=True),
                             self.target.register_forward_hook(self._post)]

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles, self.mask = [], None

    def _pre(self, _m: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.mask = mask if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None

    def _post(self, _m: nn.Module, _args: tuple, _out: object) -> None:
        self.mask = None  # nothing stale leaks into a later call without a mask

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        return padding_rows(self.mask, x)
