"""Training a MEND editor on edit records, with checkpoints that make training resumable.

One step, for a batch of B training records (prompt p, new target t, rephrase r, locality probe):

1. fine-tuning gradient taps on ``p + t`` of the *unedited* model: per-token inputs x and output
   gradients δ of each edited module (the editor's running input statistics are updated here);
2. the editor maps them to low-rank deltas ``U Vᵀ`` (one combined edit for the batch, as MEND);
3. with the deltas applied as forward hooks: L_edit = NLL of t after p and after r,
   L_loc = KL(pre ‖ post) on the locality text's tokens; loss = c_edit·L_edit + c_loc·L_loc,
   backpropagated into the editor only (the model is frozen).

Data order is a pure function of (seed, step), and every ``save_every`` steps the editor, the
Adam state and the step are written atomically to ``OUT/checkpoint/`` (safetensors + JSON). A
killed run restarted with the same arguments resumes from the last checkpoint and reaches the
same final editor (bit-identical on the same machine; within float tolerance elsewhere).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Sequence

import torch

from ...entries.delta import is_conv1d
from ...facts import Fact
from ...arch import arch_of
from .hparams import MendTrainConfig
from ...ops.fingerprint import checkpoint_probe
from ...ops.hooks import frozen, get_module, patch_output
from ...ops.memory import peak_memory_mb
from ...ops.tokens import batch_encode, target_ids
from ...paths import portable_path
from .model import MendEditor, encode_edit, grad_taps, nll

__all__ = ["train_mend", "CHECKPOINT_DIR", "module_shape", "data_hash"]

CHECKPOINT_DIR = "checkpoint"


def module_shape(mod: torch.nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear or GPT-2 Conv1D."""
    w = mod.weight
    if is_conv1d(mod):
        return int(w.shape[1]), int(w.shape[0])
    return int(getattr(mod, "out_features", w.shape[0])), int(getattr(mod, "in_features", w.shape[1]))


def data_hash(records: Sequence[Fact]) -> str:
    h = hashlib.sha256()
    for f in records:
        h.update(json.dumps(f.to_json(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def _batch_indices(step: int, bs: int, n: int, seed: int, cache: dict[int, list[int]]) -> list[int]:
    out = []
    for i in range(step * bs, (step + 1) * bs):
        epoch, pos = divmod(i, n)
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()
        out.append(cache[epoch][pos])
    return out


def _step_batch(tok: Any, facts: Sequence[Fact], device: Any) -> tuple[dict, torch.Tensor, int, torch.Tensor | None]:
    """Encode outer (prompt and first rephrase, with target) + locality rows in one right-padded batch."""
    outer_p, outer_t, loc = [], [], []
    for f in facts:
        for p in [f.text_prompt, *f.rephrase[:1]]:
            outer_p.append(p)
            outer_t.append(f.target_new)
        probes = [p for ps in f.locality.values() for p in ps]
        if probes:
            loc.append(f"{probes[0].prompt} {probes[0].answer}")
    tgts = [target_ids(tok, t) for t in outer_t]
    texts = [p + tok.decode(t) for p, t in zip(outer_p, tgts)] + loc
    enc = dict(batch_encode(tok, texts, device))
    labels = torch.full_like(enc["input_ids"], -100)
    for i, t in enumerate(tgts):
        end = int(enc["attention_mask"][i].sum())
        labels[i, end - len(t): end] = torch.tensor(t, device=labels.device)
    n_outer = len(outer_p)
    loc_mask = enc["attention_mask"][n_outer:].bool() if loc else None
    return enc, labels, n_outer, loc_mask


def _kl(pre_logits: torch.Tensor, post_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pre = torch.log_softmax(pre_logits.float(), -1)
    post = torch.log_softmax(post_logits.float(), -1)
    kl = (pre.exp() * (pre - post)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def _save_checkpoint(out: Path, editor: MendEditor, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tensors = {f"editor/{k}": v.detach().cpu().contiguous() for k, v in editor.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"opt/{pid}/{k}"] = (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
    meta = {**meta, "param_groups": sd["param_groups"]}
    final = out / CHECKPOINT_DIR
    tmp = out / f".{CHECKPOINT_DIR}.tmp-{uuid.uuid4().hex[:6]}"
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    old = None
    if final.exists():
        old = out / f".{CHECKPOINT_DIR}.old-{uuid.uuid4().hex[:6]}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(out: Path, editor: MendEditor, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    ck = out / CHECKPOINT_DIR
    flat = load_file(str(ck / "state.safetensors"))
    meta = json.loads((ck / "state.json").read_text())
    editor.load_state_dict({k[len("editor/"):]: v for k, v in flat.items() if k.startswith("editor/")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in flat.items():
        if k.startswith("opt/"):
            _, pid, name = k.split("/", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def train_mend(model: Any, records: Sequence[Fact], out_dir: str | os.PathLike, cfg: MendTrainConfig | None = None,
               *, resume: bool = True, stop_after: int | None = None, progress: bool = True,
               data_name: str = "") -> dict[str, Any]:
    """Train (or resume training) a MEND editor for ``model`` on ``records``; returns training info.

    ``stop_after`` ends this call after that many steps *without* a final checkpoint, exactly as
    if the process were killed (for testing resumption). On completion the editor is written to
    ``out_dir`` (``editor.safetensors`` + ``editor.json``) and can be used with
    ``model.edit(fact, method="mend", editor=out_dir)``.
    """
    cfg = cfg or MendTrainConfig()
    records = [f for f in records if isinstance(f, Fact)]
    if not records:
        raise ValueError("MEND training needs at least one edit record (prompt + target_new)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch = arch_of(model)
    layers = cfg.resolved_layers(model)
    modules = [arch.mlp_out_at(i) for i in layers]
    shapes = [module_shape(get_module(model, m)) for m in modules]
    device = next(model.parameters()).device
    torch.manual_seed(cfg.seed)
    editor = MendEditor(modules, shapes, cfg.rank, cfg.init_lr).to(device)
    opt = torch.optim.Adam([{"params": [p for n, p in editor.named_parameters() if n != "log_lrs"], "lr": cfg.lr},
                            {"params": [editor.log_lrs], "lr": cfg.lr_lr}])
    fp = model.fingerprint() if hasattr(model, "fingerprint") else ""
    dh = data_hash(records)
    run = {"config": cfg.model_dump(mode="json"), "modules": modules, "base_fingerprint": fp,
           "base_checkpoint": checkpoint_probe(model),
           "base_model": portable_path(getattr(model.config, "_name_or_path", None)), "data_hash": dh,
           "n_records": len(records), "data": data_name}
    step, history, elapsed = 0, [], 0.0
    if resume and (out / CHECKPOINT_DIR / "state.json").is_file():
        saved = json.loads((out / CHECKPOINT_DIR / "state.json").read_text())["run"]
        for k in ("modules", "base_fingerprint", "data_hash"):
            if saved.get(k) != run[k]:
                raise ValueError(f"checkpoint in {out} was made with a different {k} ({saved.get(k)!r} vs "
                                 f"{run[k]!r}); use another --out or --no-resume")
        free = ("steps", "save_every")  # may change between runs
        same = {k: v for k, v in saved["config"].items() if k not in free}
        if same != {k: v for k, v in run["config"].items() if k not in free}:
            raise ValueError(f"checkpoint in {out} was made with other training settings {same}; "
                             "resume with the same settings (only --steps and --save-every may change) or use "
                             "--no-resume")
        meta = _load_checkpoint(out, editor, opt)
        step, history, elapsed = meta["step"], meta["history"], meta["elapsed_s"]
    tok = model.tokenizer
    perm_cache: dict[int, list[int]] = {}
    t0 = time.time()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train mend", unit="step", file=sys.stderr)
    ran = 0
    with frozen(model):
        while step < cfg.steps:
            if stop_after is not None and ran >= stop_after:
                break
            batch = [records[i] for i in _batch_indices(step, cfg.batch_size, len(records), cfg.seed, perm_cache)]
            # 1. gradient taps of the unedited model on the edit inputs
            enc_e, lab_e = encode_edit(tok, [f.text_prompt for f in batch], [f.target_new for f in batch], device)
            taps = grad_taps(model, modules, enc_e, lab_e)
            editor.update_stats(taps)
            # 2-3. edit, then losses with the edit applied
            enc, labels, n_outer, loc_mask = _step_batch(tok, batch, device)
            pre = None
            if loc_mask is not None:
                with torch.no_grad():
                    pre = model(input_ids=enc["input_ids"][n_outer:],
                                attention_mask=enc["attention_mask"][n_outer:]).logits
            opt.zero_grad(set_to_none=True)
            with torch.enable_grad(), contextlib.ExitStack() as hooks:
                factors = editor.factors(taps)
                for m, (U, V) in factors.items():
                    hooks.enter_context(patch_output(
                        model, m, lambda o, x, U=U, V=V: (o + (x.float() @ V) @ U.T).to(o.dtype)))
                logits = model(**enc).logits
                l_edit = nll(logits[:n_outer], labels[:n_outer])
                l_loc = _kl(pre, logits[n_outer:], loc_mask) if pre is not None else logits.new_zeros(())
                loss = cfg.c_edit * l_edit + cfg.c_loc * l_loc
                loss.backward()
            torch.nn.utils.clip_grad_norm_(editor.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            ran += 1
            history.append([round(l_edit.detach().item(), 5), round(l_loc.detach().item(), 6)])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(edit=f"{history[-1][0]:.3f}", loc=f"{history[-1][1]:.4f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                _save_checkpoint(out, editor, opt, {"step": step, "history": history, "run": run,
                                                    "elapsed_s": elapsed + time.time() - t0})
    if bar is not None:
        bar.close()
    elapsed += time.time() - t0
    info = {**run, "steps_done": step, "finished": step >= cfg.steps, "train_seconds": round(elapsed, 1),
            **peak_memory_mb(), "final_edit_nll": history[-1][0] if history else None,
            "first_edit_nll": history[0][0] if history else None,
            "learned_step_sizes": [float(v) for v in editor.log_lrs.detach().exp()]}
    if step >= cfg.steps:
        editor.save(out, info)
    return info
