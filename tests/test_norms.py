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


def test_many_low_rank_parts_fold_into_one_dense_delta_with_the_same_output_and_bound():
    """Past the rank where factors cost more than a dense matrix, the side-car applies one dense
    delta: same output to float rounding, the stored parts untouched, and the norm bound still sees
    the whole stack (it reads the summed delta in whichever form it is kept)."""
    from editwrap.entries.delta import Sidecar
    from editwrap.ops.norms import bound_parts

    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(6, 4, bias=False)
    car = Sidecar(lin)
    parts = [{"U": torch.randn(4, 1, generator=g), "V": torch.randn(6, 1, generator=g)} for _ in range(6)]
    x = torch.randn(3, 6, generator=g)
    for i, p in enumerate(parts[:2]):
        car.add(f"e{i}", p)
    U, V, D = car._factors(x.device)
    assert U is not None and D is None, "rank 2 stays low-rank"
    for i, p in enumerate(parts[2:], start=2):
        car.add(f"e{i}", p)
    U, V, D = car._factors(x.device)
    assert U is None and D is not None, "rank 6 > 2*4*6/(4+6): folded"
    low = sum((x @ p["V"]) @ p["U"].T for p in parts)
    torch.testing.assert_close(car.delta_out(x), low, rtol=1e-5, atol=1e-6)
    assert all(car.parts[f"e{i}"] is p for i, p in enumerate(parts))

    host = torch.nn.Module()
    host.lin, host._sidecars = lin, {"lin": car}
    new = {"U": 10 * torch.randn(4, 1, generator=g), "V": torch.randn(6, 1, generator=g)}
    stack = sum(p["U"] @ p["V"].T for p in parts)
    cap = 1.01 * float(stack.norm()) / float(lin.weight.norm())  # room for a little of the new edit
    s = bound_parts(host, {"lin": new}, cap)["lin"]
    assert 0.0 < s < 1.0
    assert float((stack + new["U"] @ new["V"].T).norm()) == pytest.approx(cap * float(lin.weight.norm()), rel=1e-4)


def test_reading_the_summed_delta_keeps_the_forward_cache():
    """``weight_delta`` (norm reads, merge) reads the cached factors on the forward's device instead
    of replacing them with a CPU copy, which made the next forward concatenate and fold again.
    The meta device stands in for an accelerator: it has its own tensors and no data."""
    from editwrap.entries.delta import Sidecar

    car = Sidecar(torch.nn.Linear(6, 4, bias=False))
    for i in range(3):
        car.add(f"e{i}", {"U": torch.randn(4, 1), "V": torch.randn(6, 1)})
    torch.testing.assert_close(car.weight_delta(), sum(p["U"] @ p["V"].T for p in car.parts.values()))
    car.delta_out(torch.zeros(2, 6, device="meta"))
    cached = car._cache
    assert cached is not None and cached[0].device.type == "meta"
    assert car.weight_delta().device.type == "meta"
    assert car._cache is cached
