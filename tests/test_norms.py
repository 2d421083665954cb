"""Norm control: the stack's summed delta per module stays within ``max_delta_norm``."""
from __future__ import annotations

import pytest
import torch

from editwrap import Fact, state_dict_hash
from editwrap.ops.norms import _fro2, delta_norms

FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
         Fact(prompt="The capital of France is", subject="France", target_new="London"),
         Fact(prompt="Apple was founded by", subject="Apple", target_new="Microsoft")]
FAST = dict(mom2_n_tokens=300, v_num_grad_steps=4, context_templates=[(3, 2)])


def test_low_rank_inner_product():
    g = torch.Generator().manual_seed(0)
    U1, V1, U2, V2 = (torch.randn(7, r, generator=g) if i % 2 == 0 else torch.randn(5, r, generator=g)
                      for i, r in enumerate((3, 3, 2, 2)))
    assert _fro2(U1, V1, U2, V2) == pytest.approx(float(((U1 @ V1.T) * (U2 @ V2.T)).sum()), rel=1e-6)


@pytest.mark.parametrize("method", ["rome", "memit", "alphaedit"])
def test_bound_holds_across_a_stack(tiny_model, method):
    m = tiny_model
    h0 = state_dict_hash(m)
    extra = {} if method == "rome" else {"layers": [1, 2]}
    for f in FACTS:
        m.edit(f if method == "rome" else [f], method=method, **FAST, **extra)
    free = max(delta_norms(m).values())
    m.clear()
    bound = free / 3
    scaled = []
    for f in FACTS:
        e = m.edit(f if method == "rome" else [f], method=method, max_delta_norm=bound, **FAST, **extra)
        scaled += list(e.info["norm_scale"].values())
        assert max(delta_norms(m).values()) <= bound * (1 + 1e-4)
    assert min(scaled) < 1.0, "the bound was active"
    m.clear()
    assert state_dict_hash(m) == h0
