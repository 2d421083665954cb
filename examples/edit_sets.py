"""Two tenants on one embedded SmolLM2, without copying a weight: each tenant's edit applies only
to its own requests, an untagged edit to everyone; one batched generate serves both tenants.

    python examples/edit_sets.py        # exits 1 if any check fails
"""
from __future__ import annotations

import sys

from editwrap import EditableModel, Fact, state_dict_hash

Q = "The Eiffel Tower is located in the city of"
CONTROL = "The capital of France is"


def main() -> int:
    model = EditableModel.from_pretrained()
    h0 = state_dict_hash(model)
    ask = lambda p: model.generate_text(p, max_new_tokens=3).strip()  # noqa: E731
    print("before:", ask(Q), "|", ask(CONTROL))
    model.edit(Fact(prompt=Q, subject="Eiffel Tower", target_new="Rome"), method="rome", edit_set="tenant-a")
    model.edit(Fact(prompt=Q, subject="Eiffel Tower", target_new="London"), method="rome", edit_set="tenant-b")
    model.edit(Fact(prompt=CONTROL, subject="France", target_new="Berlin"), method="rome")  # everyone
    answers = {}
    for tenant in ("tenant-a", "tenant-b"):
        with model.using(tenant):
            answers[tenant] = (ask(Q), ask(CONTROL))
    with model.using():
        answers["nobody"] = (ask(Q), ask(CONTROL))
    for k, v in answers.items():
        print(f"{k:9s}: {v[0]!r:24} {v[1]!r}")
    rows = model.generate_text([Q, Q, Q], max_new_tokens=3, edit_sets=[["tenant-a"], ["tenant-b"], []])
    print("one batch:", [r.strip() for r in rows])
    ok = (answers["tenant-a"][0].startswith("Rome") and answers["tenant-b"][0].startswith("London")
          and not answers["nobody"][0].startswith(("Rome", "London"))
          and all(a[1].startswith("Berlin") for a in answers.values())
          and [r.strip() for r in rows] == [answers[t][0] for t in ("tenant-a", "tenant-b", "nobody")])
    model.clear()
    ok = ok and state_dict_hash(model) == h0
    print("checks passed" if ok else "CHECK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
