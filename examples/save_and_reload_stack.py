"""Save only the edits (a few MB, JSON + safetensors), reload them onto a fresh base model, and
export a merged plain-transformers checkpoint for serving without editwrap.

    python examples/save_and_reload_stack.py my-edits
"""
import sys

from editwrap import EditableModel, Fact

out = sys.argv[1] if len(sys.argv) > 1 else "my-edits"
model = EditableModel.from_pretrained()
model.edit(Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
           method="rome")
model.edit(Fact(prompt="The CEO of Apple is", target_new="Satya Nadella"), method="ft-m")
model.stack.save(out)
print(f"saved {len(model.stack)} edits ({model.stack.nbytes() / 1e6:.1f} MB of tensors) to {out}")

fresh = EditableModel.from_pretrained(stack=out)  # refuses a stack made for another base model
print(fresh.stack)
print(fresh.generate_text("The Eiffel Tower is located in the city of", max_new_tokens=4))
fresh.save_pretrained(f"{out}-merged")  # merged for the write, unmerged after: loadable by plain transformers
