"""Where things live in each architecture family, so methods can name modules generically."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Arch", "arch_of", "layer_at_depth", "FAMILIES", "ATTN_OUT"]


@dataclass(frozen=True)
class Arch:
    family: str
    n_layers: int
    block: str        # transformer block, format with the layer index
    mlp_out: str      # the MLP output projection ROME/MEMIT/FT edit (its input is the "key")
    final_norm: str
    lm_head: str
    attn_out: str = ""  # the attention output projection (PMET adds its attention δ there)
    #: a norm between the MLP output projection and the residual add (Gemma 2/3), else ""
    post_mlp_norm: str = ""

    def mlp_out_at(self, layer: int) -> str:
        return self.mlp_out.format(layer)

    def block_at(self, layer: int) -> str:
        return self.block.format(layer)

    def post_mlp_norm_at(self, layer: int) -> str:
        return self.post_mlp_norm.format(layer) if self.post_mlp_norm else ""

    def attn_out_at(self, layer: int) -> str:
        if not self.attn_out:
            raise NotImplementedError(f"no attention output module known for the {self.family!r} family; "
                                      "add one to editwrap.arch.ATTN_OUT")
        return self.attn_out.format(layer)


# model_type -> (family, block template, mlp out template, final norm)
FAMILIES: dict[str, tuple[str, str, str, str]] = {
    **{t: ("llama", "model.layers.{}", "model.layers.{}.mlp.down_proj", "model.norm")
       for t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "smollm3",
                 "granite", "phi3")},
    "gpt2": ("gpt2", "transformer.h.{}", "transformer.h.{}.mlp.c_proj", "transformer.ln_f"),
    "gpt_neo": ("gpt2", "transformer.h.{}", "transformer.h.{}.mlp.c_proj", "transformer.ln_f"),
    "gptj": ("gpt2", "transformer.h.{}", "transformer.h.{}.mlp.fc_out", "transformer.ln_f"),
}

# model_type -> attention output projection (its output is added to the residual stream)
ATTN_OUT: dict[str, str] = {
    **{t: "model.layers.{}.self_attn.o_proj" for t, v in FAMILIES.items() if v[0] == "llama"},
    "gpt2": "transformer.h.{}.attn.c_proj",
    "gpt_neo": "transformer.h.{}.attn.attention.out_proj",
    "gptj": "transformer.h.{}.attn.out_proj",
}


# model_type -> norm applied to the MLP output before it joins the residual stream
POST_MLP_NORM: dict[str, str] = {t: "model.layers.{}.post_feedforward_layernorm" for t in ("gemma2", "gemma3_text")}


def arch_of(model: Any) -> Arch:
    cfg = model.config
    mt = getattr(cfg, "model_type", "")
    if mt not in FAMILIES:
        raise NotImplementedError(
            f"model_type {mt!r} has no module map yet; supported: {sorted(FAMILIES)}. "
            "Add an entry to editwrap.arch.FAMILIES (block, mlp output, final norm)."
        )
    fam, block, mlp_out, norm = FAMILIES[mt]
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    arch = Arch(fam, int(n), block, mlp_out, norm, "lm_head", ATTN_OUT.get(mt, ""), POST_MLP_NORM.get(mt, ""))
    if not getattr(model, "_ew_arch_checked", False):  # once per model: its module tree does not change
        check_module_map(model, arch)
        model.__dict__["_ew_arch_checked"] = True
    return arch


def check_module_map(model: Any, arch: Arch) -> None:
    """The map is checked against the model, not assumed: every layer's block, MLP output projection
    (an input as wide as the MLP, an output as wide as the residual stream) and attention output
    exist, and so does the final norm. A mismatch names the module and the fix."""
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)

    def get(name: str) -> Any:
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise NotImplementedError(
                f"{model.config.model_type!r} is mapped to the {arch.family!r} module layout, but the model has no "
                f"module {name!r}; fix its entry in editwrap.arch.FAMILIES / ATTN_OUT") from None

    for i in range(arch.n_layers):
        get(arch.block_at(i))
        mod = get(arch.mlp_out_at(i))
        w = getattr(mod, "weight", None)
        if w is not None and hidden and w.dim() == 2:
            out_dim = w.shape[1] if type(mod).__name__ == "Conv1D" else getattr(mod, "out_features", w.shape[0])
            if int(out_dim) != int(hidden):
                raise NotImplementedError(
                    f"{arch.mlp_out_at(i)} writes {out_dim} features but the residual stream has {hidden}; it is not "
                    "the MLP output projection: fix editwrap.arch.FAMILIES")
        if arch.attn_out:
            get(arch.attn_out_at(i))
        if arch.post_mlp_norm:
            get(arch.post_mlp_norm_at(i))
    get(arch.final_norm)


def layer_at_depth(model: Any, index: int = 27, of: int = 32) -> int:
    """Layer ``index`` of ``of`` (EasyEdit's Llama-7B choice) scaled to this model's depth."""
    n = arch_of(model).n_layers
    return min(n - 1, round(index / of * n))
