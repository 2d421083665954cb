"""editwrap vs a local EasyEdit checkout: CPU seconds per edited fact and edit quality, side by side.

    OMP_NUM_THREADS=1 python benchmarks/vs_easyedit.py --easyedit ../EasyEdit --methods rome,memit:10,ft-m \
        --n 3 --out docs/results/speed/vs_easyedit.json

Why: ``edit_speed.py`` times editwrap alone; a speed claim needs the reference implementation next to
it. This runs EasyEdit's *own* editing code (``apply_rome_to_model``, ``apply_memit_to_model``,
``apply_ft_to_model``) and editwrap's on the same model, records, hyperparameters and covariance.
EasyEdit's console output goes to ``$TMPDIR/vs_easyedit.log``.

Protocol, per ``method[:batch]`` and side, each in its own subprocess (OMP/MKL threads = 1,
``torch.set_num_threads(1)``), on the embedded SmolLM2-135M-Instruct (float32, CPU): load the model,
one warm-up edit of record N (context templates and covariance then cached; its CPU time is reported
separately), then ``ceil(n / batch)`` edits of ``batch`` records each (``memit:10 --n 3``: one batch of
records 0-9). Per edit: ``time.process_time()`` around the editing call only, then per record Edit Succ.
(teacher-forced token accuracy of target_new on the prompt), rephrase accuracy and locality with
``editwrap.evals.metrics``; then the model is restored (editwrap: ``pop``; EasyEdit: its returned
original weights, copied back as its ``restore_after_edit`` does) and the state-dict hash is checked.

EasyEdit workarounds (monkeypatching / inputs only; the checkout is not modified):
* ``easyeditor/__init__.py`` and ``easyeditor/models/__init__.py`` import every method and their
  dependencies (openai, sentence-transformers, ...): both packages are stubbed in ``sys.modules`` with
  their real ``__path__``, so only ``models/{rome,memit,ft}`` and ``util`` are imported.
* No internet (EasyEdit computes covariance from wikipedia via ``datasets``): editwrap's own second
  moment (``editwrap.ops.covariance.second_moment``: ``mom2_corpus``/``mom2_n_tokens`` of its defaults)
  is written as EasyEdit's ``layer_stats`` cache (``CombinedStat(mom2=SecondMoment)`` npz, count 1)
  into a temp ``stats_dir``, so both sides use the same matrix. For ROME it is ``C + cov_ridge *
  mean(diag C) * I``, the matrix editwrap's ROME solves against (EasyEdit's ROME has no ridge).
* ``util/generate.py:generate_fast`` (context templates) passes only the new column of the attention
  mask along with the KV cache unless ``'llama' in model.name_or_path``; transformers 5 honours that
  1-column mask, so the templates came out as noise ("The--,-- and,-,"). SmolLM2 is a
  ``LlamaForCausalLM`` whose path lacks "llama" (``BaseEditor`` would not even load it), so the
  instance attribute ``name_or_path`` gets a "llama-architecture:" prefix (config untouched) and
  EasyEdit's own Llama branch (``attention_mask=None``) runs.
* Tied embeddings: ``named_parameters()`` has no ``lm_head.weight``, which MEMIT's ``compute_z`` looks
  up, so ``lm_head_module`` is set to ``model.embed_tokens`` (the same tensor).
* ``device: 0`` in the configs means ``cuda:0`` to ``normalize_device``: set to ``"cpu"``.
* Tokenizer as ``BaseEditor`` prepares a Llama one (the model path holds no "llama", so done here):
  ``pad_token_id = eos_token_id``; padding right for ROME/MEMIT, left for FT.
Hyperparameters: EasyEdit's ``hparams/{ROME,MEMIT,FT}/llama-7b.yaml`` with the model-specific fields
set to editwrap's defaults for this model (recorded as ``overrides`` in the JSON): ROME layer 5,
templates [[10, 5]] (the yaml's [[5, 10], [10, 10]] gives 20 prefixes instead of 5), mom2 adjustment on
(the yaml has it off); MEMIT layers 4-8, λ = editwrap's depth-scaled 2093 (yaml: 15000); v_loss_layer =
last layer; FT-M = FT with objective ``target_new`` on layer 20's down_proj. Differences left as they are:
EasyEdit stops FT at loss < 1e-2 (editwrap 1e-3), inverts C in float32 for ROME (editwrap: float64 solve),
samples its own context templates, and has none of editwrap's exact speed-ups.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_DATA = "knowedit:ZsRE"
EASYEDIT_HINT = ("pass --easyedit PATH (or set EASYEDIT_PATH) to an EasyEdit checkout, i.e. a directory with "
                 "easyeditor/models/rome/rome_main.py and hparams/ROME/llama-7b.yaml; get one with "
                 "`git clone https://github.com/zjunlp/EasyEdit`")
METHODS = {"rome": ("ROME", "rome.rome_main", "ROMEHyperParams", "apply_rome_to_model"),
           "memit": ("MEMIT", "memit.memit_main", "MEMITHyperParams", "apply_memit_to_model"),
           "ft-m": ("FT", "ft.ft_main", "FTHyperParams", "apply_ft_to_model")}
SIDES = ("editwrap", "easyedit")


def easyedit_root(path: str | None) -> Path:
    """The checkout, or SystemExit naming the flag: without one there is nothing to compare against."""
    if not path:
        raise SystemExit(f"error: no EasyEdit checkout given; {EASYEDIT_HINT}")
    root = Path(path).expanduser().resolve()
    if not (root / "easyeditor/models/rome/rome_main.py").is_file() or not (root / "hparams/ROME").is_dir():
        raise SystemExit(f"error: --easyedit {path} is not an EasyEdit checkout; {EASYEDIT_HINT}")
    return root


def parse_specs(text: str) -> list[tuple[str, int]]:
    specs = []
    for s in [x for x in text.split(",") if x]:
        m, _, b = s.partition(":")
        if m not in METHODS or (m != "memit" and b not in ("", "1")):
            raise SystemExit(f"error: --methods: unknown or unbatchable spec '{s}' (use {', '.join(METHODS)}; "
                             "memit:B for batches)")
        specs.append((m, int(b or 1)))
    return specs


def import_easyedit(root: Path) -> types.SimpleNamespace:
    """EasyEdit's method modules without the package ``__init__``s (see the module doc)."""
    import importlib

    for name, sub in (("easyeditor", "easyeditor"), ("easyeditor.models", "easyeditor/models")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / sub)]
            sys.modules[name] = pkg
    ns = types.SimpleNamespace(nethook=importlib.import_module("easyeditor.util.nethook"),
                               device=importlib.import_module("easyeditor.util.device"),
                               stats=importlib.import_module("easyeditor.util.runningstats"))
    for method, (_, mod, hcls, fn) in METHODS.items():
        m = importlib.import_module(f"easyeditor.models.{mod}")
        setattr(ns, method, (getattr(m, hcls), getattr(m, fn)))
    return ns


def easyedit_hparams(root: Path, method: str, hp: Any, n_layers: int, model_path: str, stats_dir: str,
                     lm_head: str = "lm_head") -> tuple[dict, dict]:
    """(config, overrides): EasyEdit's llama-7b yaml with editwrap's defaults for this model."""
    import yaml

    alg = METHODS[method][0]
    cfg = yaml.safe_load((root / f"hparams/{alg}/llama-7b.yaml").read_text())
    over: dict[str, Any] = {"model_name": model_path, "device": "cpu"}
    if method == "ft-m":
        over.update(layers=list(hp.layers), num_steps=hp.num_steps, lr=hp.lr, weight_decay=hp.weight_decay,
                    objective_optimization="target_new", norm_constraint=False)
    else:
        over.update(v_num_grad_steps=hp.v_num_grad_steps, v_lr=hp.v_lr, v_loss_layer=n_layers - 1,
                    v_weight_decay=hp.v_weight_decay, clamp_norm_factor=hp.clamp_norm_factor,
                    kl_factor=hp.kl_factor, mom2_adjustment=True, stats_dir=stats_dir, lm_head_module=lm_head,
                    mom2_dataset=f"editwrap-{hp.mom2_corpus}", mom2_n_samples=hp.mom2_n_tokens,
                    mom2_dtype="float32")
        if method == "rome":
            over.update(layers=[hp.layer], context_template_length_params=[list(t) for t in hp.context_templates])
        else:
            over.update(layers=list(hp.layers), mom2_update_weight=hp.mom2_update_weight)
    for k, v in cfg.items():  # EasyEdit's construct_float_from_scientific_notation
        if isinstance(v, str):
            try:
                cfg[k] = float(v)
            except ValueError:
                pass
    over = {k: v for k, v in over.items() if cfg.get(k) != v}
    cfg.update(over)
    return cfg, over


def write_easyedit_stats(ee: types.SimpleNamespace, cfg: dict, covs: dict, model_name: str) -> None:
    """Each module's C as the npz ``layer_stats`` loads instead of computing it from wikipedia."""
    for module, c in covs.items():
        stat = ee.stats.CombinedStat(mom2=ee.stats.SecondMoment())
        stat.mom2.count, stat.mom2.mom2 = 1, c.float().clone()
        path = (Path(cfg["stats_dir"]) / model_name / f"{cfg['mom2_dataset']}_stats" /
                f"{module}_{cfg['mom2_dtype']}_mom2_{cfg['mom2_n_samples']}.npz")
        ee.stats.save_cached_state(str(path), stat, {"sample_size": cfg["mom2_n_samples"]})


def load_side(side: str, method: str, root: Path | None, tmp: str) -> tuple[Any, Any, Callable, dict]:
    """(model, tokenizer, edit(facts) -> restore(), info) for one side and method."""
    import torch

    from editwrap import EditableModel

    em = EditableModel.from_pretrained()
    hp = em.default_hparams(method)
    if side == "editwrap":
        def edit_ew(facts: list) -> Callable:
            e = em.edit(facts[0] if method != "memit" else facts, method=method)
            return lambda: e.pop()
        return em, em.tokenizer, edit_ew, {"hparams": hp.model_dump(mode="json")}
    from transformers import AutoTokenizer

    from editwrap.arch import arch_of
    from editwrap.ops.covariance import second_moment

    assert root is not None
    ee = import_easyedit(root)
    path = em.name_or_path
    tied = "lm_head.weight" not in dict(em.named_parameters())
    cfg, over = easyedit_hparams(root, method, hp, arch_of(em).n_layers, path, tmp,
                                 "model.embed_tokens" if tied else "lm_head")
    if method != "ft-m":
        modules = [cfg["rewrite_module_tmp"].format(layer) for layer in cfg["layers"]]
        covs = second_moment(em, modules, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens)
        if method == "rome":
            covs = {m: c + hp.cov_ridge * c.diagonal().mean() * torch.eye(c.shape[0]) for m, c in covs.items()}
        write_easyedit_stats(ee, cfg, covs, path.rsplit("/")[-1])
    model = em.unwrap()  # the plain transformers model EasyEdit's editor would load
    model.name_or_path = f"llama-architecture:{path}"  # generate_fast's Llama branch (module doc)
    tok = AutoTokenizer.from_pretrained(path)
    tok.pad_token_id = tok.eos_token_id
    tok.padding_side = "left" if method == "ft-m" else "right"
    hcls, apply = getattr(ee, method)
    hparams = hcls(**cfg)

    def edit_ee(facts: list) -> Callable:
        reqs = [{"prompt": f.prompt, "subject": f.subject, "target_new": f.target_new, "case_id": i}
                for i, f in enumerate(facts)]
        _, orig = apply(model, tok, reqs, hparams, copy=False, return_orig_weights=True)
        def restore() -> None:
            with torch.no_grad():
                for k, v in orig.items():
                    ee.device.copy_to_param(ee.nethook.get_parameter(model, k), v)
        return restore
    return model, tok, edit_ee, {"hparams": cfg, "overrides": over}


def measure(side: str, method: str, batch: int, n: int, data: str, root: Path | None) -> dict:
    """One side, one method: warm-up edit, then timed edits with scoring and restore (module doc)."""
    import torch
    import transformers

    from editwrap import state_dict_hash
    from editwrap.evals.datasets import load_dataset
    from editwrap.evals.probe import edit_and_probe

    torch.set_num_threads(1)
    torch.manual_seed(0)
    k = math.ceil(n / batch) * batch
    facts = list(load_dataset("zsre", data, n=k + 1))
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, edit, info = load_side(side, method, root, tmp)
        c0 = time.process_time()
        edit(facts[k:k + 1])()
        warm = time.process_time() - c0
        h0 = state_dict_hash(model)
        cpus, accs, reph, locs, exact = [], [], [], [], True
        for b in range(0, k, batch):
            group = facts[b:b + batch]
            restore, secs, got = edit_and_probe(model, tok, group, lambda: edit(group))
            cpus.append(secs)
            accs += got["edit_succ"]
            reph += got["rephrase"]
            locs += got["locality"]
            restore()
            exact &= state_dict_hash(model) == h0
            print(f"  [{side} {method}:{batch} {b + batch}/{k}] {cpus[-1]:.1f} CPU-s, acc {accs[-batch:]}",
                  file=sys.stderr, flush=True)
    return {"side": side, "records": k, "warmup_cpu_s": warm, "cpu_s_per_fact": sum(cpus) / k,
            "cpu_s_per_edit": cpus, "edit_succ": statistics.mean(accs), "per_record_acc": accs,
            "rephrase": statistics.mean(reph) if reph else None, "locality": statistics.mean(locs) if locs else None,
            "restored_bit_exact": exact, "torch_threads": torch.get_num_threads(),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}, **info}


def run_side(side: str, method: str, batch: int, args: argparse.Namespace, root: Path, log: Path) -> dict:
    """``measure`` in a fresh single-threaded interpreter (EasyEdit's chatter goes to ``log``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.NamedTemporaryFile(suffix=".json") as res, open(log, "a") as lf:
        lf.write(f"\n===== {side} {method}:{batch} =====\n")
        lf.flush()
        cmd = [sys.executable, __file__, "--easyedit", str(root), "--data", args.data, "--n", str(args.n),
               "--_worker", f"{side}:{method}:{batch}", "--_result", res.name]
        err = subprocess.STDOUT if side == "easyedit" else None
        if subprocess.run(cmd, check=False, env=env, stdout=lf, stderr=err).returncode:
            raise SystemExit(f"error: the {side} {method}:{batch} run failed; see {log}")
        return json.loads(Path(res.name).read_text())


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "–" if x is None else format(x, fmt)


def table(rows: list[dict]) -> str:
    """Markdown: one line per method, editwrap vs EasyEdit (ratio = EasyEdit / editwrap CPU time)."""
    head = ("| method | records | editwrap CPU-s / fact | EasyEdit CPU-s / fact | ratio (EasyEdit / editwrap) "
            "| Edit Succ. editwrap | Edit Succ. EasyEdit | rephrase editwrap | rephrase EasyEdit "
            "| locality editwrap | locality EasyEdit |")
    out = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ew, ee = r["editwrap"], r["easyedit"]
        ratio = ee["cpu_s_per_fact"] / ew["cpu_s_per_fact"] if ew["cpu_s_per_fact"] else None
        out.append(f"| {r['method']} | {r['records']} | {ew['cpu_s_per_fact']:.2f} | {ee['cpu_s_per_fact']:.2f} | "
                   f"{_f(ratio, '.1f')}× | {_f(ew['edit_succ'])} | {_f(ee['edit_succ'])} | {_f(ew.get('rephrase'))} | "
                   f"{_f(ee.get('rephrase'))} | {_f(ew.get('locality'))} | {_f(ee.get('locality'))} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--easyedit", default=os.environ.get("EASYEDIT_PATH"),
                    help="EasyEdit checkout (default: $EASYEDIT_PATH); its commit is read from .git or a COMMIT file")
    ap.add_argument("--methods", default="rome,memit:10,ft-m", help="method[:batch], comma-separated")
    ap.add_argument("--n", type=int, default=3, help="records per method (rounded up to whole batches)")
    ap.add_argument("--data", default=DEFAULT_DATA, help="ZsRE file or dataset name (docs/data.md)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    from editwrap.paths import portable

    root = easyedit_root(args.easyedit)
    specs = parse_specs(args.methods)
    if args._worker:
        side, method, batch = args._worker.split(":")
        res = measure(side, method, int(batch), args.n, args.data, root if side == "easyedit" else None)
        Path(args._result).write_text(json.dumps(res))
        return
    log = Path(tempfile.gettempdir()) / "vs_easyedit.log"
    log.write_text("")
    git = ["git", "-C", str(root), "rev-parse", "HEAD"]
    commit = (subprocess.run(git, check=False, capture_output=True, text=True).stdout if (root / ".git").exists()
              else (root / "COMMIT").read_text() if (root / "COMMIT").exists() else "")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for method, batch in specs:
        sides = {s: run_side(s, method, batch, args, root, log) for s in SIDES}
        rows.append({"method": f"{method}:{batch}" if batch > 1 else method, "records": sides["editwrap"]["records"],
                     **sides})
        print(table(rows[-1:]), flush=True)
        if args.out:
            res = {"easyedit": str(root), "easyedit_commit": commit.strip() or None, "rows": rows}
            Path(args.out).write_text(json.dumps(portable(res, Path(args.out).parent), indent=2))  # no machine paths
    print(table(rows))


if __name__ == "__main__":
    main()
