"""LoRA and AdaLoRA editing through PEFT (EasyEdit's recipe), producing an adapter stack entry.

``compute`` injects a fresh PEFT adapter into the model (``LoraModel``/``AdaLoraModel`` tuner, as
``peft.inject_adapter_in_model`` does), trains it with teacher-forced cross-entropy on
``prompt + target`` (AdaLoRA: plus PEFT's orthogonality regulariser and rank allocation via
``update_and_allocate``), copies the adapter's tensors out, and ``unload()``s PEFT so the original
module objects are back in place and the model is bit-exact as before (checked). The result is an
:class:`~editwrap.entries.adapter.AdapterEntry`.
"""
from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any, Sequence

import torch

from ...entries.adapter import AdapterEntry, quiet_peft_import
from ...facts import Fact
from .hparams import LoraHparams
from ...ops.hooks import frozen
from ...ops.train import edit_batch, edit_loss, optimize
from ...stack import Edit
from ..base import MethodBase, register_method

__all__ = ["Lora", "AdaLora", "peft_injected"]


def _peft_config(hp: LoraHparams) -> Any:
    quiet_peft_import()
    from peft import AdaLoraConfig, LoraConfig

    common = dict(lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout, target_modules=list(hp.target_modules),
                  layers_to_transform=list(hp.layers) or None, bias="none", inference_mode=False)
    if hp.lora_type == "adalora":
        return AdaLoraConfig(init_r=hp.rank + 4, target_r=hp.rank, total_step=hp.num_steps, tinit=0, tfinal=0,
                             deltaT=1, **common)
    return LoraConfig(r=hp.rank, **common)


@contextlib.contextmanager
def peft_injected(model: Any, config: Any, adapter: str):
    """Inject a PEFT tuner for the duration of the block, then restore the exact module tree."""
    quiet_peft_import()
    from peft.tuners import AdaLoraModel, LoraModel

    before_modules = {n: m for n, m in model.named_modules()}
    before_attrs = set(model.__dict__)
    cfg_before = model.config.to_dict()
    tuner_cls = AdaLoraModel if type(config).__name__ == "AdaLoraConfig" else LoraModel
    tuner = None
    try:
        tuner = tuner_cls(model, config, adapter_name=adapter)
        # float32 adapter weights on a half-precision base, as PEFT's get_peft_model does: Adam's
        # steps on fp16 weights overflow, and PEFT's layers then run x·A·B in float32
        tuner._cast_adapter_dtype(adapter_name=adapter, autocast_adapter_dtype=True)
        for mod in model.modules():  # AdaLoRA's rank count (exact in any dtype) stays in the model's:
            rn = getattr(mod, "ranknum", None)  # its 8-bit layer scales the recast output by it
            if isinstance(rn, torch.nn.ParameterDict) and adapter in rn:
                rn[adapter] = torch.nn.Parameter(rn[adapter].to(model.dtype), requires_grad=False)
        yield tuner
    finally:
        if tuner is not None:
            tuner.unload()
        for k in set(model.__dict__) - before_attrs:
            del model.__dict__[k]
        if model.config.to_dict() != cfg_before:  # pragma: no cover - PEFT does not touch it today
            for k, v in cfg_before.items():
                setattr(model.config, k, v)
        after = {n: m for n, m in model.named_modules()}
        if after.keys() != before_modules.keys() or any(after[n] is not m for n, m in before_modules.items()):
            raise RuntimeError("PEFT unload did not restore the original module tree")  # pragma: no cover


def _extract(model: Any, adapter: str, ada: bool) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}
    scales: dict[str, float] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, LoraLayer) or adapter not in mod.scaling:
            continue
        if ada:
            state[f"{name}.lora_A"] = mod.lora_A[adapter].detach().clone()
            state[f"{name}.lora_B"] = mod.lora_B[adapter].detach().clone()
            state[f"{name}.lora_E"] = mod.lora_E[adapter].detach().clone()
            scales[name] = float(mod.scaling[adapter]) / (float(mod.ranknum[adapter]) + 1e-5)
        else:
            state[f"{name}.lora_A.weight"] = mod.lora_A[adapter].weight.detach().clone()
            state[f"{name}.lora_B.weight"] = mod.lora_B[adapter].weight.detach().clone()
            scales[name] = float(mod.scaling[adapter])
    if not state:
        raise ValueError("no module matched target_modules; check the hparams' target_modules/layers")
    return state, scales


class _Adapter(MethodBase):
    family = "adapter"
    lora_type = "lora"
    Hparams = LoraHparams

    def default_hparams(self, model: Any) -> LoraHparams:
        return LoraHparams.for_model(model, self.lora_type)

    def compute(self, model: Any, facts: Sequence[Fact], hp: LoraHparams) -> Edit:
        t0 = time.time()
        hp = hp.model_copy(update={"lora_type": self.lora_type})
        ada = hp.lora_type == "adalora"
        config = _peft_config(hp)
        adapter = f"ew{uuid.uuid4().hex[:8]}"
        enc, labels = edit_batch(model, facts, "target_new")
        with contextlib.ExitStack() as st:
            st.enter_context(frozen(model))
            st.enter_context(torch.random.fork_rng(devices=[]))
            torch.manual_seed(hp.seed)
            tuner = st.enter_context(peft_injected(model, config, adapter))
            st.enter_context(torch.enable_grad())
            params = [p for n, p in tuner.named_parameters() if adapter in n and p.requires_grad]
            if any(p.is_meta for p in params):
                raise ValueError(f"{self.name} cannot train an adapter on layers whose weights are offloaded "
                                 "(accelerate disk/CPU offload: meta tensors); map the adapted layers (hparams "
                                 "layers/target_modules) to a device in device_map, or use rome, memit, ft-m or grace, "
                                 "which edit offloaded layers")
            opt = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)

            def step() -> tuple[torch.Tensor, dict[str, Any]]:
                out = tuner(**enc, labels=labels)
                if not ada:
                    return out.loss, {}
                # AdaLoRA's tuner forward adds its orthogonal regulariser to the loss, so the loss
                # never reaches early_stop_loss (all num_steps ran: 30-66 s per edit on one core);
                # the early stop looks at the target NLL alone, as for LoRA
                nll = edit_loss(out.logits, labels).item()
                return out.loss, {"nll": round(nll, 5), "early_stop_on": nll}

            # AdaLoRA's ranks are re-allocated after every step (PEFT's update_and_allocate)
            info = optimize(opt, step, hp.num_steps, hp.early_stop_loss,
                            after_step=tuner.update_and_allocate if ada else None)
            state, scales = _extract(model, adapter, ada)
        cfg = config.to_dict()
        cfg["inference_mode"] = True
        if ada:
            cfg["rank_pattern"] = None  # masked ranks stay as zeros in lora_E, at full size
        info["seconds"] = round(time.time() - t0, 3)
        entry = AdapterEntry(state, cfg, scales)
        return Edit(self.name, facts, hp.model_dump(mode="json"), entry, info=info)


@register_method
class Lora(_Adapter):
    name = "lora"
    display_name = "LoRA"
    lora_type = "lora"
    suites = ("gpu-quant", "adapters-zsre")


@register_method
class AdaLora(_Adapter):
    name = "adalora"
    display_name = "AdaLoRA"
    rank = 1
    lora_type = "adalora"
    suites = ("gpu-adapters", "adapters-zsre")
    knowedit_reference = {
        "recent": {"Edit Succ.": 100.00, "Portability": 64.69, "Locality": 56.42, "Fluency": 579.57},
        "zsre": {"Edit Succ.": 100.00, "Portability": 58.03, "Locality": 75.76, "Fluency": 563.56},
        "wikibio": {"Edit Succ.": 100.00, "Locality": 81.28, "Fluency": 618.45},
        "counterfact": {"Edit Succ.": 100.00, "Portability": 69.89, "Locality": 70.31, "Fluency": 580.29},
        "convsent": {"Edit Succ.": 44.89, "Locality": 0.18, "Fluency": 606.42},
        "sanitation": {"Edit Succ.": 2.50, "Locality": 65.50, "Fluency": 330.44},
    }
