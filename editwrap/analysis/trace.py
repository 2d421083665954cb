"""Causal tracing (Meng et al. 2022, "Locating and Editing Factual Associations in GPT", §2).

Why: locate-then-edit methods pick the layer to edit from where a fact's recall is causally
decided; this measures it on any wrapped model. Three runs of the prompt: *clean*; *corrupted*,
with Gaussian noise added to the subject tokens' input embeddings (scale ``noise_factor`` × the
std of the embedding matrix entries: ROME's choice of 3σ, with σ from the embedding statistics);
*restored*, corrupted but with one internal state copied back from the clean run. The indirect
effect of a state is ``p_restored − p_corrupted`` of the clean answer token.

Three grids over (token, layer), as in kmeng01/rome ``experiments/causal_trace.py``:
``hidden`` restores the block output at one (token, layer); ``mlp`` and ``attn`` restore the MLP
(attention) output projections at one token over a window of ``window`` layers centred on the
layer (``[l − w//2, l + ⌈w/2⌉)``, clipped). Modules come from :func:`editwrap.arch.arch_of`,
so every supported family works. Each corrupted run averages ``samples`` noise draws; the same
draws are used for every restoration (ROME reseeds per trace), and many restorations run in one
batch: a row per (restoration, sample).
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..arch import Arch, arch_of
from ..ops.hooks import capture, patch_output
from ..ops.tokens import target_ids
from .io import write_json, write_png

__all__ = ["KINDS", "causal_trace", "subject_range", "noise_scale", "plot_trace"]

KINDS = ("hidden", "mlp", "attn")
_CMAPS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def subject_range(tok: Any, prompt: str, subject: str) -> tuple[int, int]:
    """``[begin, end)`` token indices covering the subject's last occurrence in ``prompt``
    (character offsets, so BPE pieces that carry the leading space count as subject tokens)."""
    pos = prompt.rfind(subject)
    if pos < 0:
        raise ValueError(f"subject {subject!r} not in prompt {prompt!r}")
    end = pos + len(subject)
    offsets = tok(prompt, return_offsets_mapping=True)["offset_mapping"]
    idx = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > pos]
    if not idx:
        raise ValueError(f"subject {subject!r} covers no token of {prompt!r}")
    return idx[0], idx[-1] + 1


def noise_scale(model: Any, factor: float = 3.0) -> float:
    """``factor`` × std of the input embedding matrix entries (the embedding statistics)."""
    return factor * float(model.get_input_embeddings().weight.detach().float().std())


def _embed_name(model: Any) -> str:
    emb = model.get_input_embeddings()
    return next(n for n, m in model.named_modules() if m is emb)


def _module(arch: Arch, kind: str, layer: int) -> str:
    return {"hidden": arch.block_at, "mlp": arch.mlp_out_at, "attn": arch.attn_out_at}[kind](layer)


def _window(layer: int, n_layers: int, window: int) -> range:
    return range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2)))


def _configs(arch: Arch, kind: str, n_tokens: int, window: int) -> list[list[tuple[str, int]]]:
    """One restoration per (token, layer), row-major; each is a list of (module, token) to restore."""
    out = []
    for t in range(n_tokens):
        for layer in range(arch.n_layers):
            layers = [layer] if kind == "hidden" else _window(layer, arch.n_layers, window)
            out.append([(_module(arch, kind, j), t) for j in layers])
    return out


def _restorer(mask: torch.Tensor, clean: torch.Tensor) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def fn(out: torch.Tensor, _inp: Any) -> torch.Tensor:
        return torch.where(mask[..., None].to(out.device), clean.to(out.device, out.dtype), out)
    return fn


def _run(model: Any, ids: torch.Tensor, configs: Sequence[list[tuple[str, int]]], clean: dict[str, torch.Tensor],
         noise: torch.Tensor, span: tuple[int, int], answer: int, embed: str) -> torch.Tensor:
    """Mean answer probability over the noise samples, per restoration config (one forward)."""
    n_samples, b, e = noise.shape[0], span[0], span[1]
    rows = len(configs) * n_samples
    masks: dict[str, torch.Tensor] = {}
    for c, cfg in enumerate(configs):
        for name, t in cfg:
            mask = masks.setdefault(name, torch.zeros(rows, ids.shape[1], dtype=torch.bool))
            mask[c * n_samples:(c + 1) * n_samples, t] = True
    rep = noise.repeat(len(configs), 1, 1)  # row c*S + s gets draw s

    def corrupt(out: torch.Tensor, _inp: Any) -> torch.Tensor:
        out = out.clone()
        out[:, b:e] += rep.to(out.device, out.dtype)
        return out

    kw = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    with contextlib.ExitStack() as st, torch.no_grad():
        st.enter_context(patch_output(model, embed, corrupt))
        for name, mask in masks.items():
            st.enter_context(patch_output(model, name, _restorer(mask, clean[name])))
        logits = model(input_ids=ids.expand(rows, -1), use_cache=False, **kw).logits[:, -1]
    return logits.float().softmax(-1)[:, answer].view(len(configs), n_samples).mean(1).cpu()


def causal_trace(model: Any, prompt: str, subject: str, target: str | None = None, *, samples: int = 3,
                 window: int = 10, noise_factor: float = 3.0, kinds: Sequence[str] = KINDS, seed: int = 0,
                 batch_rows: int = 96) -> dict[str, Any]:
    """Trace one prompt; a JSON-ready dict with the grids (``restored`` and ``indirect_effect``,
    each ``[token][layer]``), the tokens and the clean/corrupted probabilities.

    The answer is the first token of ``target`` when given, else the clean run's top token.
    ``batch_rows``: rows per forward (restorations × samples).
    """
    if samples < 1 or window < 1:
        raise ValueError(f"samples and window must be >= 1 (got {samples}, {window})")
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown trace kinds {bad}; choose from {KINDS}")
    t0 = time.time()
    tok, arch = model.tokenizer, arch_of(model)
    device = next(model.parameters()).device
    ids = tok(prompt, return_tensors="pt")["input_ids"].to(device)
    span = subject_range(tok, prompt, subject)
    names = sorted({_module(arch, k, layer) for k in kinds for layer in range(arch.n_layers)})
    with torch.no_grad(), capture(model, names, inputs=False) as store:
        probs = model(input_ids=ids, use_cache=False).logits[0, -1].float().softmax(-1)
    clean = {n: store[n]["output"][0] for n in names}
    answer = target_ids(tok, target)[0] if target else int(probs.argmax())
    width = model.get_input_embeddings().weight.shape[1]
    scale = noise_scale(model, noise_factor)
    gen = torch.Generator().manual_seed(seed)
    noise = scale * torch.randn(samples, span[1] - span[0], width, generator=gen)
    embed = _embed_name(model)
    step = max(1, batch_rows // samples)

    def grid(configs: list[list[tuple[str, int]]]) -> torch.Tensor:
        vals = [_run(model, ids, configs[i:i + step], clean, noise, span, answer, embed)
                for i in range(0, len(configs), step)]
        return torch.cat(vals)

    low = float(grid([[]])[0])
    n_tok, n_layers = ids.shape[1], arch.n_layers
    restored = {k: grid(_configs(arch, k, n_tok, window)).view(n_tok, n_layers) for k in kinds}
    effect = {k: v - low for k, v in restored.items()}
    peaks = {}
    for k, v in effect.items():
        i = int(v.argmax())
        peaks[k] = {"token": i // n_layers, "layer": i % n_layers, "effect": round(float(v.flatten()[i]), 6)}
    r6 = lambda g: [[round(float(x), 6) for x in row] for row in g]  # noqa: E731
    return {
        "prompt": prompt, "subject": subject, "tokens": tok.convert_ids_to_tokens(ids[0].tolist()),
        "subject_range": list(span), "answer": tok.decode([answer]), "answer_id": answer,
        "answer_from": "target" if target else "clean argmax",
        "p_clean": round(float(probs[answer]), 6), "p_corrupted": round(low, 6),
        "noise_factor": noise_factor, "noise_std": round(scale, 6), "samples": samples, "window": window,
        "seed": seed, "n_layers": n_layers,
        "modules": {k: {"hidden": arch.block, "mlp": arch.mlp_out, "attn": arch.attn_out}[k] for k in kinds},
        "restored": {k: r6(v) for k, v in restored.items()},
        "indirect_effect": {k: r6(v) for k, v in effect.items()},
        "peak": peaks, "seconds": round(time.time() - t0, 1),
    }


def plot_trace(result: dict[str, Any], path: str | Path) -> Path:
    """One heatmap per kind (rows: tokens, subject starred; columns: layers), as in ROME's figure 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(result["indirect_effect"])
    labels = list(result["tokens"])
    for i in range(*result["subject_range"]):
        labels[i] += "*"
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 1.2 + 0.28 * len(labels)), squeeze=False)
    for ax, k in zip(axes[0], kinds):
        g = torch.tensor(result["indirect_effect"][k])
        im = ax.imshow(g.numpy(), cmap=_CMAPS[k], vmin=min(0.0, float(g.min())), aspect="auto", interpolation="nearest")
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel("layer" if k == "hidden" else f"centre of {result['window']} restored layers")
        ax.set_title({"hidden": "hidden state", "mlp": "MLP output", "attn": "attention output"}[k], fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).set_label("p − p_corrupted", fontsize=7)
    fig.suptitle(f"{result['prompt']!r} → {result['answer']!r}: p clean {result['p_clean']:.3f}, "
                 f"corrupted {result['p_corrupted']:.3f} ({result['samples']} noise samples)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cmd_trace(args: argparse.Namespace) -> int:
    from ..cli import _load_model

    model = _load_model(args)
    res = causal_trace(model, args.prompt, args.subject, args.target, samples=args.samples, window=args.window,
                       noise_factor=args.noise_factor, seed=args.seed, batch_rows=args.batch_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "trace.json", res)
    png = write_png(plot_trace, res, out / "trace.png")
    print(f"answer {res['answer']!r}: p clean {res['p_clean']:.4f}, corrupted {res['p_corrupted']:.4f}; peaks "
          + ", ".join(f"{k} token {v['token']} ({res['tokens'][v['token']]!r}) layer {v['layer']}: +{v['effect']:.4f}"
                      for k, v in res["peak"].items()))
    print(f"{res['seconds']} s; wrote {out / 'trace.json'}" + (f" and {out / 'trace.png'}" if png else ""))
    return 0


def register(subparsers: Any, model_args: Callable[[argparse.ArgumentParser], None]) -> None:
    from .cli import add_out

    p = subparsers.add_parser("trace", help="causal tracing (ROME): which hidden states, MLPs and attention "
                                            "layers carry a fact")
    model_args(p)
    p.add_argument("--prompt", required=True)
    p.add_argument("--subject", required=True, help="the subject as it appears in the prompt (its tokens get noise)")
    p.add_argument("--target", default=None, help="answer whose first token is traced (default: the clean top token)")
    p.add_argument("--samples", type=int, default=3, help="noise draws per corrupted run (ROME: 10)")
    p.add_argument("--window", type=int, default=10, help="layers restored together for the MLP/attention grids")
    p.add_argument("--noise-factor", type=float, default=3.0, help="noise std = this × std of the embedding matrix")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-rows", type=int, default=96, help="sequences per forward")
    add_out(p, "results/analysis")
    p.set_defaults(func=cmd_trace)
