"""Scoped side-cars on the embedded model: many edits that never add up, each applied only to
inputs whose text matches its prompt, and an exact return to the base model.

    python examples/scoped_edits.py

`scoped-ft-m` is the configuration that held over 1,000 mixed edits (docs/methods/scoped.md): a few
seconds per edit on a CPU. `scoped-rome` also works (it needs each fact's subject); `scoped-ultraedit`
takes well under a second and misses more facts.
"""
from editwrap import EditableModel, Fact, state_dict_hash
from editwrap.evals.generation import answer_match, cut_answer

FACTS = [Fact(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
         Fact(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux", target_new="English"),
         Fact(prompt="The official language of Brazil is", subject="Brazil", target_new="French")]
OTHER = ["The Colosseum is located in the city of", "The official language of Portugal is"]

model = EditableModel.from_pretrained()
h0 = state_dict_hash(model)
before = {p: model.generate_text(p, max_new_tokens=4) for p in OTHER}
for fact in FACTS:
    model.edit(fact, method="scoped-ft-m")  # one scope per edit: its delta and its prompt's embedding
router = model.__dict__["_ew_scope_router"]
ok = True
for fact in FACTS:
    answer = model.generate_text(fact.prompt, max_new_tokens=4)
    ok &= answer_match(cut_answer(answer), fact.target_new) == 1.0  # the greedy answer is the new target
    print(f"{fact.prompt!r} -> {answer!r}")
for p in OTHER:  # routed to no edit: computed bit for bit as unedited
    same = model.generate_text(p, max_new_tokens=4) == before[p]
    ok &= same and router.route_texts([p])[0] is None
    print(f"{p!r} -> {model.generate_text(p, max_new_tokens=4)!r} (routed to {router.route_texts([p])[0]}, "
          f"unchanged: {same})")
model.clear()
exact = state_dict_hash(model) == h0
print("back to the base model bit for bit:", exact)
print("checks passed" if ok and exact else "CHECKS FAILED")
raise SystemExit(0 if ok and exact else 1)
