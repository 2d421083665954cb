"""Scoped side-cars on the embedded model: many edits that never add up, each applied only to
inputs whose text matches its prompt, and an exact return to the base model.

    python examples/scoped_edits.py

ROME takes several seconds per edit on a CPU; `scoped-ultraedit` takes well under one and misses
more facts (docs/methods/scoped.md).
"""
from editwrap import EditableModel, Fact, state_dict_hash

FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
         Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux", target_new="English"),
         Fact(prompt="The official language of Brazil is", subject="Brazil", target_new="French")]
OTHER = ["The Colosseum is located in the city of", "The official language of Portugal is"]

model = EditableModel.from_pretrained()
h0 = state_dict_hash(model)
before = {p: model.generate_text(p, max_new_tokens=4) for p in OTHER}
for fact in FACTS:
    model.edit(fact, method="scoped-rome")  # one scope per edit: its delta and its prompt's embedding
router = model.__dict__["_ew_scope_router"]
for fact in FACTS:
    print(f"{fact.prompt!r} -> {model.generate_text(fact.prompt, max_new_tokens=4)!r}")
for p in OTHER:  # routed to no edit: computed bit for bit as unedited
    print(f"{p!r} -> {model.generate_text(p, max_new_tokens=4)!r} (routed to {router.route_texts([p])[0]}, "
          f"unchanged: {model.generate_text(p, max_new_tokens=4) == before[p]})")
model.clear()
print("back to the base model bit for bit:", state_dict_hash(model) == h0)
