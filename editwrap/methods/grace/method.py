"""GRACE: a discrete key-value codebook at one layer (Hartvigsen et al., NeurIPS 2023).

For each fact (in order): the key is the wrapped module's input at the last prompt token; the
codebook is searched for the nearest key and grown or split as in the paper (EasyEdit's
``GRACEAdapter.forward`` at ``iter == 0``); then the chosen row's value is trained so that
replacing the module output at that token by it makes the model produce the target
(teacher-forced CE on prompt + target). The codebook on the model is not modified: the method
works on a copy and the entry records the new rows and the changed ones.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Sequence

import torch

from .entry import Codebook, GraceEntry, codebooks
from ...facts import Fact
from ...arch import arch_of
from .hparams import GraceHparams
from ...ops.hooks import capture, frozen, patch_output
from ...ops.train import edit_batch, optimize, prompt_lengths, target_loss_step
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Grace"]


@contextlib.contextmanager
def _suspended(cb: Codebook | None) -> Iterator[None]:
    was = cb.enabled if cb is not None else None
    try:
        if cb is not None:
            cb.enabled = False
        yield
    finally:
        if cb is not None:
            cb.enabled = was


def _place(book: Codebook, query: torch.Tensor, label: str, hp: GraceHparams, d_out: int) -> int:
    """Grow/split/expand the codebook for a new key as EasyEdit's GRACE does; return the row to train."""
    new_value = torch.rand(1, d_out)
    if len(book) == 0:
        book.keys, book.values = query[None].clone(), new_value
        book.eps, book.labels = torch.tensor([hp.eps]), [label]
        return 0
    dist, idx = book.nearest(query[None])
    d, j = float(dist[0]), int(idx[0])

    def add() -> int:
        book.keys = torch.cat([book.keys, query[None]])
        book.values = torch.cat([book.values, new_value])
        book.eps = torch.cat([book.eps, torch.tensor([hp.eps])])
        book.labels.append(label)
        return len(book) - 1

    if d > hp.eps + float(book.eps[j]):
        return add()
    if book.labels[j] != label:  # conflict: new key, both radii split at the midpoint
        row = add()
        book.eps[j] = d / 2 - 1e-5
        book.eps[row] = d / 2
        return row
    if d > float(book.eps[j]):  # same answer, just outside: widen the nearest row
        if hp.eps_expand == "moving_average":
            book.keys[j] = 0.5 * book.keys[j] + 0.5 * query
        book.eps[j] = d
    return j


@register_method
class Grace(MethodBase):
    name = "grace"
    Hparams = GraceHparams
    display_name = "GRACE"
    family = "memory"
    suites = ("main-other", "gpu-adapters", "adapters-zsre")

    def compute(self, model: Any, facts: Sequence[Fact], hp: GraceHparams) -> Edit:
        t0 = time.time()
        module = arch_of(model).mlp_out_at(hp.layer)
        live = codebooks(model).get(module)
        book = live.copy() if live is not None else Codebook(None)
        base_rows = len(book)
        info: dict[str, Any] = {}
        with contextlib.ExitStack() as st:
            st.enter_context(frozen(model))
            st.enter_context(_suspended(live))
            st.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(hp.seed)
            for fact in facts:
                enc, labels = edit_batch(model, [fact], "target_new")
                p = int(prompt_lengths(labels)[0])
                with capture(model, [module], outputs=True) as cap:
                    with torch.no_grad():
                        model(**enc)
                query = cap[module]["input"][0, p].float().cpu()
                label = " ".join(str(t) for t in labels[0][labels[0] != -100].tolist())
                row = _place(book, query, label, hp, cap[module]["output"].shape[-1])
                if hp.val_init == "warm":
                    book.values[row] = cap[module]["output"][0, p].float().cpu()
                value = book.values[row].clone().to(enc["input_ids"].device).requires_grad_(True)
                opt = torch.optim.Adam([value], lr=hp.edit_lr)

                def fn(out: torch.Tensor, inp: torch.Tensor, p: int = p) -> torch.Tensor:
                    out = book.apply(out, inp)
                    pos = torch.zeros(out.shape[1], 1, dtype=out.dtype, device=out.device)
                    pos[p] = 1
                    return out * (1 - pos) + pos * value.to(out.dtype)

                with patch_output(model, module, fn), torch.enable_grad():
                    info = optimize(opt, target_loss_step(model, enc, labels, "target_new", module),
                                    hp.n_iter, hp.early_stop_loss)
                book.values[row] = value.detach().cpu()
        changed = [i for i in range(base_rows) if not (torch.equal(book.keys[i], live.keys[i]) and
                   torch.equal(book.values[i], live.values[i]) and float(book.eps[i]) == float(live.eps[i]))]
        idx = torch.tensor(changed, dtype=torch.long)
        entry = GraceEntry(module, base_rows, book.keys[base_rows:], book.values[base_rows:], book.eps[base_rows:],
                           book.labels[base_rows:], idx, book.keys[idx], book.values[idx], book.eps[idx],
                           [book.labels[i] for i in changed])
        info.update(seconds=round(time.time() - t0, 3), codebook_rows=len(book))
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)
