"""The value optimisation of the locate-then-edit methods (ROME's ``compute_v``, MEMIT's ``compute_z``).

For each fact, a vector δ is added to ``module``'s output at the subject's last token of every
rewriting prompt (the fact's prompt after each context template, followed by the target's
teacher-forced prefix) and of one KL prompt ("{subject} is a"); δ is optimised so the model
predicts the target (NLL), keeps its next-token distribution on the KL prompt (KL), and stays
small (weight decay + a norm clamp). The result is ``v* = v_init + δ``.

Three exact speed-ups over running each fact's full prompts through the whole model each step:

* **Prefix cache.** Nothing before the subject's last token depends on δ (causal attention), so
  those positions are run once and kept as a KV cache; each step runs only the tail from the
  subject's last token on. Rows are left-padded so every row's subject ends at the same column
  (explicit ``position_ids`` keep positions what they were). Used when every entry on the stack
  is a weight side-car; activation entries (WISE, GRACE, ...) may read the whole sequence, so
  with them on the stack the full forward runs instead.
* **Lower blocks replayed.** The blocks below the patched module (and the patched block itself
  when δ is added to its output, as for MEMIT's z) see the same inputs every step: their outputs
  are recorded in the first step and returned as they are afterwards.
* **Facts batched.** The facts' losses are independent and Adam is element-wise, so optimising
  the sum over a batch of facts gives each fact's δ exactly as alone. A fact whose loss falls
  below ``early_stop_loss`` is finished at that step (as alone) and its rows leave the batch.

``editwrap.ops.exact.exact_paths(prefix_cache=False, replay_lower=False, batch_facts=1)`` gives the
plain path; tests pin each combination equal to it.

**Several modules** (PMET: the attention and the MLP output of one layer): ``module`` may be a
sequence of names; each fact gets one δ per module, all added at the subject's last token and
optimised jointly (weight decay summed over modules, each δ clamped against its own ``v_init``).
The prefix cache stays exact because every module is patched only from the subject's last token on.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal, Sequence, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..facts import Fact
from . import exact
from .hooks import frozen, patch_output
from .kvcache import cache_kwarg, prefix_cache_ok, reset_cache
from .replay import ReplayBelow
from .profile import phase
from .tokens import subject_last_index, target_ids

__all__ = ["ValueHparams", "ValueFields", "optimize_values", "logits_at", "fill_template", "only_sidecars"]


class ValueFields(BaseModel):
    """The value optimisation's hyperparameters, declared once: the methods' pydantic hparams
    inherit them (``LocateHparams`` in ``editwrap.methods.locate_then_edit``), :class:`ValueHparams` reads them back."""

    v_num_grad_steps: int = Field(25, ge=1)
    v_lr: float = Field(0.5, gt=0)
    v_weight_decay: float = Field(1e-3, ge=0)
    kl_factor: float = Field(0.0625, ge=0)
    clamp_norm_factor: float = Field(4.0, gt=0)
    early_stop_loss: float = Field(0.05, ge=0)
    #: NLL weight from the step after a fact's target became the argmax at every target position
    #: (PMET's reference: 0.1, so the KL term then dominates); 1 keeps MEMIT's loss
    nll_factor_at_argmax: float = Field(1.0, ge=0)
    #: finish a fact once its target is the argmax and its weighted KL is at most this (PMET: 0.01)
    stop_kl_at_argmax: float | None = Field(None, ge=0)
    #: "adam" (the references'); "ngd": each δ moves ``v_lr`` (hidden-state units) along its unit
    #: gradient, plus ``v_momentum`` × its last move (a trade-off; docs/speed.md)
    v_optimizer: Literal["adam", "ngd"] = "adam"
    v_momentum: float = Field(0.0, ge=0, lt=1)


class ValueHparams(ValueFields):
    """The value fields of any method's hparams (``ValueHparams(**hp.model_dump())``)."""

    model_config = ConfigDict(extra="ignore")


def fill_template(template: str, prompt: str) -> str:
    return template.replace("{}", prompt)


def logits_at(host: Any, enc: dict[str, Any], rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Logits at positions ``(rows[i], cols[i])`` only, as float32 ``[len(rows), vocab]``.

    The vocabulary projection of every position is a fifth of a small model's forward+backward;
    running the body and projecting only the positions a loss reads saves it. Models whose head
    does more than a linear map (logit soft-capping, scaled logits), and hosts with hooks on their
    own forward, take the full forward (editwrap's own mask readers hook ``ops.hooks.forward_root``).
    """
    head = host.get_output_embeddings()
    cfg = host.config
    plain = (head is not None and not host._forward_hooks and not host._forward_pre_hooks
             and getattr(cfg, "final_logit_softcapping", None) is None and getattr(cfg, "logit_scale", None) is None
             and hasattr(host, "base_model") and host.base_model is not host)
    if not plain:
        return host(**enc).logits[rows, cols].float()
    hidden = host.base_model(**enc)[0]
    return head(hidden[rows, cols]).float()


def only_sidecars(host: Any) -> bool:
    """Whether every stack entry is a weight side-car (so a cached prefix is what a full run sees)."""
    return all(getattr(e.entry, "kind", "") == "delta" for e in getattr(host, "_edits", []))


@dataclass
class _Rows:
    """The token rows of a batch of facts: per fact, its rewriting rows then its KL row."""

    ids: list[list[int]]
    subj: list[int]           # index of the subject's last token in each row
    owner: list[int]          # fact index (within the batch) of each row
    targets: list[list[int]]  # per fact, the target's token ids
    n_rw: int                 # rewriting rows per fact


def _build_rows(tok: Any, facts: Sequence[Fact], templates: Sequence[str]) -> _Rows:
    ids, subj, owner, targets = [], [], [], []
    for j, f in enumerate(facts):
        tgt = target_ids(tok, f.target_new)
        tail = tok.decode(tgt[:-1]) if len(tgt) > 1 else ""
        rewriting = [fill_template(t, f.text_prompt) for t in templates]
        for text, lookup_text in [(r + tail, r) for r in rewriting] + [(f"{f.subject} is a", f"{f.subject} is a")]:
            ids.append(tok(text)["input_ids"])
            subj.append(subject_last_index(tok, lookup_text, f.subject))
            owner.append(j)
        targets.append(tgt)
    return _Rows(ids, subj, owner, targets, len(templates))


def _layout(rows: _Rows, pad_id: int, align: bool, device: torch.device
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Pad the rows into one batch. ``align``: left-pad so every subject ends at column ``P``.

    Returns ``(enc, offset per row, P)``: token ``k`` of row ``i`` sits at column ``offset[i] + k``.
    """
    n = len(rows.ids)
    p = max(rows.subj) if align else 0
    offset = [p - s for s in rows.subj] if align else [0] * n
    width = max(o + len(r) for o, r in zip(offset, rows.ids))
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, (o, r) in enumerate(zip(offset, rows.ids)):
        input_ids[i, o:o + len(r)] = torch.tensor(r)
        mask[i, o:o + len(r)] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    enc = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device), "position_ids": pos.to(device)}
    return enc, torch.tensor(offset), p


def optimize_values(host: Any, module: Union[str, Sequence[str]], facts: Sequence[Fact], templates: Sequence[str],
                    hp: ValueHparams) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]]]:
    """v* for each fact at ``module``'s output: ``(v_star [n, d], v_init [n, d], infos)``; for a
    sequence of ``m`` module names, one jointly optimised δ per module: ``[m, n, d]`` each."""
    mods = [module] if isinstance(module, str) else list(module)
    if not mods or len(set(mods)) < len(mods):
        raise ValueError(f"optimize_values needs one or more distinct modules, got {module!r}")
    if len({_out_dim(host, m) for m in mods}) > 1:
        raise ValueError(f"modules {mods} differ in output width; their values cannot be stacked")
    with phase("value optimisation"):
        # facts with similar tails (tokens from the subject on) share a batch: less padding
        order = sorted(range(len(facts)), key=lambda i: _tail_length(host.tokenizer, facts[i]))
        stars, inits, infos = [], [], []
        step = exact.current().batch_facts
        for i in range(0, len(facts), step):
            s, v0, inf = _optimize_batch(host, mods, [facts[j] for j in order[i:i + step]], templates, hp)
            stars.append(s)
            inits.append(v0)
            infos += inf
        back = torch.tensor(sorted(range(len(order)), key=order.__getitem__))
        v_star, v_init = torch.cat(stars, 1)[:, back], torch.cat(inits, 1)[:, back]
        infos = [infos[k] for k in back.tolist()]
    return (v_star[0], v_init[0], infos) if isinstance(module, str) else (v_star, v_init, infos)


def _tail_length(tok: Any, fact: Fact) -> int:
    """Tokens of the prompt from the subject's last token on, plus the target's."""
    prompt = fact.text_prompt
    return len(tok(prompt)["input_ids"]) - subject_last_index(tok, prompt, fact.subject) + \
        len(target_ids(tok, fact.target_new))


def _optimize_batch(host: Any, modules: list[str], facts: Sequence[Fact], templates: Sequence[str], hp: ValueHparams
                    ) -> tuple[torch.Tensor, torch.Tensor, list[dict[str, float]]]:
    """One batch of facts: ``(v_star [m, n, d], v_init [m, n, d], infos)``."""
    tok = host.tokenizer
    device = next(host.parameters()).device
    assert all(f.subject for f in facts)
    rows = _build_rows(tok, facts, templates)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    use_cache = exact.current().prefix_cache and only_sidecars(host) and prefix_cache_ok(host)
    enc, offset, p = _layout(rows, pad, use_cache, device)
    n_f, per, n_m = len(facts), rows.n_rw + 1, len(modules)
    d = _out_dim(host, modules[0])

    # column of the subject's last token, and of each target-predicting position, per row
    subj_col = offset + torch.tensor(rows.subj)
    t_rows, t_cols, t_ids, t_owner = [], [], [], []
    for j, tgt in enumerate(rows.targets):
        for r in range(j * per, j * per + rows.n_rw):
            start = offset[r].item() + len(rows.ids[r]) - len(tgt)
            t_rows += [r] * len(tgt)
            t_cols += list(range(start, start + len(tgt)))
            t_ids += tgt
            t_owner += [j] * len(tgt)
    kl_rows = [j * per + rows.n_rw for j in range(n_f)]

    delta = torch.zeros(n_m, n_f, d, device=device, requires_grad=True)
    v_init = torch.zeros(n_m, n_f, d, device=device)
    nll_w = [1.0] * n_f  # per-fact NLL weight (changes only with nll_factor_at_argmax != 1)
    watch_argmax = hp.nll_factor_at_argmax != 1.0 or hp.stop_kl_at_argmax is not None
    v_star: list[torch.Tensor | None] = [None] * n_f
    infos: list[dict[str, float]] = [{} for _ in range(n_f)]
    active = list(range(n_f))  # facts still optimising, in batch order
    state: dict[str, Any] = {}

    def select(active_facts: list[int]) -> None:
        """Index tensors for the rows of the active facts (positions within the current batch)."""
        keep = [r for j in active_facts for r in range(j * per, (j + 1) * per)]
        new_of = {r: i for i, r in enumerate(keep)}
        tk = [i for i, r in enumerate(t_rows) if r in new_of]
        kl = [r for r in kl_rows if r in new_of]
        state.update(
            keep=keep,
            rows=torch.arange(len(keep), device=device),
            cols=subj_col[keep].to(device),
            owner=torch.tensor([rows.owner[r] for r in keep], device=device),
            sel_rows=torch.tensor([new_of[t_rows[i]] for i in tk] + [new_of[r] for r in kl], device=device),
            sel_cols=torch.tensor([t_cols[i] for i in tk] + [int(subj_col[r]) for r in kl], device=device),
            t_ids=torch.tensor([t_ids[i] for i in tk], device=device),
            t_owner=torch.tensor([t_owner[i] for i in tk], device=device),
            n_t=len(tk))

    def add_delta(m: int) -> Any:
        def add(out: torch.Tensor, _inp: Any) -> torch.Tensor:
            if m not in state.setdefault("init_done", set()):  # v_init: each fact's "{}" row, unpatched
                first = [j * per for j in range(n_f)]
                v_init[m].copy_(out[first, subj_col[first].to(device)].detach().float())
                state["init_done"].add(m)
            out = out.clone()
            at = (state["rows"], state["cols"])
            out[at] = (out[at] + delta[m][state["owner"]]).to(out.dtype)  # float32 sum, one rounding
            return out
        return add

    with frozen(host):
        cache = None
        if use_cache and p > 0:
            with torch.no_grad():
                out = host.base_model(**{k: v[:, :p] for k, v in enc.items()}, use_cache=True)
                cache = out["cache"] if "cache" in out else out["past_key_values"]
            enc = {"input_ids": enc["input_ids"][:, p:], "attention_mask": enc["attention_mask"],
                   "position_ids": enc["position_ids"][:, p:]}
            subj_col, t_cols = subj_col - p, [c - p for c in t_cols]
        select(active)
        # the lowest patched module bounds the blocks that may be replayed
        replay = ReplayBelow.lowest(host, modules) if exact.current().replay_lower and only_sidecars(host) else None
        init_kl: torch.Tensor | None = None
        cache_kw = {cache_kwarg(host): cache, "use_cache": True} if cache is not None else {}
        opt = torch.optim.Adam([delta], lr=hp.v_lr) if hp.v_optimizer == "adam" else \
            _RowNormalisedGD([delta], lr=hp.v_lr, momentum=hp.v_momentum)
        with torch.enable_grad(), contextlib.ExitStack() as patches:
            for m, name in enumerate(modules):
                patches.enter_context(patch_output(host, name, add_delta(m)))
            for step in range(hp.v_num_grad_steps):
                opt.zero_grad()
                step_enc: dict[str, Any] = {**{k: v[state["keep"]] for k, v in enc.items()}, **cache_kw}
                if replay is None:
                    lower = contextlib.nullcontext()
                elif step == 0:
                    lower = replay.record()
                else:
                    lower = replay.replay(state["keep"] if len(state["keep"]) < len(rows.ids) else None)
                with lower:
                    logits = logits_at(host, step_enc, state["sel_rows"], state["sel_cols"])
                if cache is not None:
                    reset_cache(cache, p)
                n_t = state["n_t"]
                kl_logp = torch.log_softmax(logits[n_t:], -1)
                if init_kl is None:
                    init_kl = kl_logp.detach().clone()  # row j = fact j (all active at step 0)
                tok_lp = torch.log_softmax(logits[:n_t], -1).gather(1, state["t_ids"][:, None]).squeeze(1)
                hit = logits[:n_t].argmax(-1) == state["t_ids"] if watch_argmax else None
                losses, parts = [], []
                for a, j in enumerate(active):
                    n_tgt = len(rows.targets[j])
                    nll = -tok_lp[state["t_owner"] == j].view(rows.n_rw, n_tgt).sum(1).div(n_tgt).mean()
                    kl = hp.kl_factor * F.kl_div(init_kl[j:j + 1], kl_logp[a:a + 1], log_target=True,
                                                 reduction="batchmean")
                    wd = sum(hp.v_weight_decay * (delta[m, j].norm() / v_init[m, j].norm() ** 2) for m in range(n_m))
                    losses.append((nll if nll_w[j] == 1.0 else nll_w[j] * nll) + kl + wd)
                    parts.append((nll, kl))
                still = []
                for a, j in enumerate(active):
                    loss = losses[a].item()
                    infos[j] = {"loss": loss, "nll": parts[a][0].item(), "kl": parts[a][1].item(), "steps": step + 1,
                                "target_prob": float(torch.exp(-parts[a][0].detach()))}
                    argmax = hit is not None and bool(hit[state["t_owner"] == j].all())
                    done_kl = argmax and hp.stop_kl_at_argmax is not None and infos[j]["kl"] <= hp.stop_kl_at_argmax
                    if loss < hp.early_stop_loss or done_kl or step == hp.v_num_grad_steps - 1:
                        v_star[j] = (v_init[:, j] + delta[:, j].detach().float()).cpu()
                    else:
                        still.append(a)
                    nll_w[j] = hp.nll_factor_at_argmax if argmax else 1.0  # from the next step on
                if not still:
                    break
                torch.stack([losses[a] for a in still]).sum().backward()
                opt.step()
                with torch.no_grad():
                    for j in (active[a] for a in still):
                        for m in range(n_m):
                            max_norm = hp.clamp_norm_factor * v_init[m, j].norm()
                            if delta[m, j].norm() > max_norm:
                                delta[m, j].mul_(max_norm / delta[m, j].norm())
                if len(still) < len(active):  # finished facts leave the batch
                    old = {r: i for i, r in enumerate(state["keep"])}
                    active = [active[a] for a in still]
                    select(active)
                    if cache is not None:
                        cache.batch_select_indices(torch.tensor([old[r] for r in state["keep"]], device=device))
    return torch.stack([v for v in v_star if v is not None], 1).float(), v_init.cpu(), infos


class _RowNormalisedGD(torch.optim.Optimizer):
    """Gradient descent with a fixed step length per δ (the last dimension's rows), with momentum.

    Adam moves every coordinate by about ``lr`` whatever the gradient's shape, so its δ grows by
    ``lr·√d`` per step even along directions that do not help the loss; this moves along the
    gradient itself, so the same loss costs a smaller δ. Rows are independent: batched facts stay exact.
    """

    def __init__(self, params: Any, lr: float, momentum: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # noqa: ARG002 - the Optimizer signature
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                move = p.grad / p.grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                if group["momentum"]:
                    buf = self.state[p].get("buf")
                    move = move if buf is None else buf.mul_(group["momentum"]).add_(move)
                    self.state[p]["buf"] = move
                p.sub_(group["lr"] * move)


def _out_dim(host: Any, module: str) -> int:
    """Output width of a Linear/Conv1D, or the hidden size for a transformer block."""
    mod = host.get_submodule(module)
    for attr in ("out_features", "nf"):
        if hasattr(mod, attr):
            return int(getattr(mod, attr))
    return int(host.config.hidden_size)
