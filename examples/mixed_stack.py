"""One stack, five kinds of edit on the embedded SmolLM2: a ROME weight delta, a LoRA adapter, a
GRACE codebook, a WISE side memory and a MELO block. Each answer changes; the stack is saved,
reloaded in a fresh Python process and gives identical logits; popping everything is bit-exact.

    python examples/mixed_stack.py [stack_dir]        # exits 1 if any check fails
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from editwrap import EditableModel, Fact, state_dict_hash
from editwrap.evals.metrics import token_accuracy

EDITS = [  # (method, fact)
    ("rome", Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")),
    ("lora", Fact(prompt="The name of the spouse of Ingrīda Amantova is", target_new="Jānis Bērziņš")),
    ("grace", Fact(prompt="Which family does Epaspidoceras belong to?", target_new="Noctuidae")),
    ("wise", Fact(prompt="What voice type is Louise Grandjean?", target_new="mezzo soprano")),
    ("melo", Fact(prompt="What species is ZIC3 specific to?", target_new="male")),
]
CONTROL = "The capital of France is"
PROMPTS = [f.prompt for _, f in EDITS] + [CONTROL]

CHILD = """
import sys, torch
from safetensors.torch import save_file
from editwrap import EditableModel
m = EditableModel.from_pretrained(stack=sys.argv[1])
prompts = sys.argv[3:]
with torch.no_grad():
    save_file({str(i): m(**m.tokenizer(p, return_tensors="pt")).logits[0].contiguous() for i, p in enumerate(prompts)},
              sys.argv[2])
"""


def logits(model: EditableModel) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return {str(i): model(**model.tokenizer(p, return_tensors="pt")).logits[0] for i, p in enumerate(PROMPTS)}


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "mixed-stack"
    model = EditableModel.from_pretrained()
    h0, base = state_dict_hash(model), logits(model)
    before = {p: model.generate_text(p, max_new_tokens=6) for p in PROMPTS}
    for method, fact in EDITS:
        model.edit(fact, method=method)
    print(model.stack)
    ok = True
    for p in PROMPTS:
        after = model.generate_text(p, max_new_tokens=6)
        print(f"{p!r}\n   before: {before[p]!r}\n   after:  {after!r}")
    for method, f in EDITS:  # EasyEdit's Edit Succ.: teacher-forced token accuracy of the target
        acc = token_accuracy(model, model.tokenizer, [f.prompt], [f.target_new])[0]
        ok &= acc >= 0.5
        print(f"  {method:6s} Edit Succ. {acc:.2f}  {f.target_new!r}")
    edited = logits(model)
    model.stack.save(out)
    child_out = out.parent / "child-logits.safetensors"
    subprocess.run([sys.executable, "-c", CHILD, str(out), str(child_out), *PROMPTS], check=True)
    child = load_file(str(child_out))
    same = all(torch.equal(child[k], edited[k]) for k in edited)
    print(f"fresh process, reloaded stack: logits identical = {same}")
    while len(model.stack):
        model.pop()
    restored = state_dict_hash(model) == h0 and all(torch.equal(v, base[k]) for k, v in logits(model).items())
    print(f"after popping all {len(EDITS)} edits: state dict and logits bit-exact = {restored}")
    return 0 if ok and same and restored else 1


if __name__ == "__main__":
    raise SystemExit(main())
