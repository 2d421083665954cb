"""Edit a fact with ROME, check the answer, undo it bit-exactly, batch-edit with MEMIT, and
correct an edit by editing the same fact again (the old edit is replaced, not stacked).

    python examples/quickstart.py
"""
from editwrap import EditableModel, Fact, state_dict_hash

model = EditableModel.from_pretrained()  # the embedded SmolLM2-135M-Instruct
original = state_dict_hash(model)
fact = Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome")

print("before:", model.generate_text(fact.prompt, max_new_tokens=6))
edit = model.edit(fact, method="rome")
print("after :", model.generate_text(fact.prompt, max_new_tokens=6))
print("other :", model.generate_text("The capital of France is", max_new_tokens=4))
print(model.stack)
edit.pop()
assert state_dict_hash(model) == original
print("popped; bit-exact:", state_dict_hash(model) == original)

facts = [
    Fact(prompt="The official language of Brazil is", subject="Brazil", target_new="French"),
    Fact(prompt="The Louvre is located in the city of", subject="Louvre", target_new="Tokyo"),
]
with model.edit(facts, method="memit"):
    for f in facts:
        print(f"{f.prompt!r} -> {model.generate_text(f.prompt, max_new_tokens=4)!r}")
print("stack after the with-block:", len(model.stack), "entries")

# Editing the same subject + relation again replaces the old edit (on_conflict="replace", the default;
# "refuse" raises, "stack" keeps both): the new edit is computed without the old one present.
model.edit(fact, method="rome")
fixed = model.edit(fact.model_copy(update={"target_new": "Berlin"}), method="rome")
print("corrected:", model.generate_text(fact.prompt, max_new_tokens=6), "| replaced:", fixed.info["conflicts"]["with"])
assert len(model.stack) == 1
model.clear()
assert state_dict_hash(model) == original
