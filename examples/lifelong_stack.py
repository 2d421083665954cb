"""Lifelong editing on the embedded model: AlphaEdit batches that protect each other, a joint
re-solve of the whole stack, retracting one fact, and an exact return to the base model.

    python examples/lifelong_stack.py [out_dir]

Cheap settings (fewer value-optimisation steps and context templates) keep it to a few CPU
minutes; drop the overrides for the defaults.
"""
import sys

from editwrap import EditableModel, Fact, state_dict_hash
from editwrap.evals.metrics import token_accuracy

FAST = dict(v_num_grad_steps=12, context_templates=[[10, 2]])
BATCH1 = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
          Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux", target_new="English")]
BATCH2 = [Fact(prompt="The Space Needle is located in the city of", subject="Space Needle", target_new="London"),
          Fact(prompt="The official language of Brazil is", subject="Brazil", target_new="French")]

out = sys.argv[1] if len(sys.argv) > 1 else "lifelong-edits"
model = EditableModel.from_pretrained()
h0 = state_dict_hash(model)


def acc(facts):
    return [round(a, 2) for a in token_accuracy(model, model.tokenizer, [f.prompt for f in facts],
                                                [f.target_new for f in facts])]


e1 = model.edit(BATCH1, method="alphaedit", **FAST)
e2 = model.edit(BATCH2, method="alphaedit", **FAST)
print(f"second edit protected the keys of {e2.info['protected']} (first edit: {e1.id})")
print("teacher-forced accuracy of all four facts:", acc(BATCH1 + BATCH2))

merged = model.stack.consolidate()  # one joint solve from the stored target values
print(f"consolidated {merged.info['consolidated']} into {merged.id} holding {len(merged.facts)} facts:",
      acc(BATCH1 + BATCH2))
model.stack.retract(BATCH2[1])  # re-solved without it
print(f"after retracting {BATCH2[1].prompt!r}: {len(model.stack[0].facts)} facts left:", acc(BATCH1 + BATCH2[:1]),
      "| the retracted fact:", acc(BATCH2[1:]))
print(model.generate_text(BATCH1[0].prompt, max_new_tokens=4))

model.stack.save(out)
fresh = EditableModel.from_pretrained(stack=out)
print("reloaded stack:", [(e.method, len(e.facts)) for e in fresh.stack])
model.clear()
print("bit-exact =", state_dict_hash(model) == h0)
