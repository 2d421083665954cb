"""Published KnowEdit numbers to print beside ours (never mixed into our own summaries).

``LLAMA2_7B_CHAT``: the KnowEdit results table for Llama-2-7b-chat as published with EasyEdit
(``examples/KnowEdit.md``, "Performence"; Zhang et al. 2024, arXiv:2401.01286, Table 4). A
different, 50x larger model, run on the full test splits with EasyEdit's hyperparameters: it is a
reference for the shape of the results, not a target for a 135M model. ConvSent "Locality" is the
KL-based score and Sanitation "Edit Succ." the share of "I don't know" answers, as in our rows.
"""
from __future__ import annotations

__all__ = ["LLAMA2_7B_CHAT", "REFERENCE_LABEL", "reference"]

REFERENCE_LABEL = "Llama-2-7b-chat (KnowEdit paper)"

_METHODS = ("serac", "ice", "adalora", "mend", "rome", "memit", "ft-l", "ft-m")
_TABLE: dict[str, dict[str, tuple[float, ...]]] = {
    "recent": {"Edit Succ.": (98.68, 60.74, 100.00, 95.75, 97.18, 97.05, 55.75, 100.00),
               "Portability": (63.52, 36.93, 64.69, 55.88, 55.25, 56.37, 40.86, 65.44),
               "Locality": (100.00, 33.34, 56.42, 94.76, 54.77, 52.15, 43.70, 64.33),
               "Fluency": (553.19, 531.01, 579.57, 557.11, 579.66, 573.89, 529.24, 574.32)},
    "zsre": {"Edit Succ.": (99.67, 66.01, 100.00, 96.74, 96.77, 95.37, 53.93, 99.98),
             "Portability": (56.48, 63.94, 58.03, 60.41, 52.63, 52.67, 45.64, 60.31),
             "Locality": (30.23, 23.14, 75.76, 92.79, 53.67, 48.32, 73.42, 89.78),
             "Fluency": (410.89, 541.14, 563.56, 524.33, 573.75, 563.31, 493.01, 552.26)},
    "wikibio": {"Edit Succ.": (99.69, 95.53, 100.00, 93.66, 96.08, 94.40, 66.33, 100.00),
                "Locality": (69.79, 47.90, 81.28, 69.51, 62.74, 61.51, 79.86, 93.38),
                "Fluency": (606.95, 632.92, 618.45, 609.39, 617.69, 616.65, 606.95, 612.69)},
    "counterfact": {"Edit Succ.": (99.99, 69.83, 100.00, 80.03, 98.57, 98.05, 45.15, 100.00),
                    "Portability": (76.07, 45.32, 69.89, 52.01, 55.92, 58.56, 33.60, 74.36),
                    "Locality": (98.96, 32.38, 70.31, 94.38, 51.97, 46.62, 50.48, 76.76),
                    "Fluency": (549.91, 547.22, 580.29, 555.72, 584.04, 575.96, 528.26, 575.62)},
    "convsent": {"Edit Succ.": (62.75, 52.78, 44.89, 50.76, 45.79, 44.75, 49.50, 46.10),
                 "Locality": (0.26, 49.73, 0.18, 3.42, 0.00, 0.00, 0.00, 0.00),
                 "Fluency": (458.21, 621.45, 606.42, 379.43, 606.32, 602.62, 607.86, 592.52)},
    "sanitation": {"Edit Succ.": (0.00, 72.50, 2.50, 0.00, 85.00, 48.75, 0.00, 75.00),
                   "Locality": (100.00, 56.58, 65.50, 5.29, 50.31, 67.47, 14.78, 47.07),
                   "Fluency": (416.29, 794.15, 330.44, 407.18, 465.12, 466.10, 439.10, 416.29)},
}

#: dataset -> metric -> method -> published value
LLAMA2_7B_CHAT: dict[str, dict[str, dict[str, float]]] = {
    ds: {metric: dict(zip(_METHODS, vals)) for metric, vals in rows.items()} for ds, rows in _TABLE.items()}


def reference(dataset: str, metric: str, method: str) -> float | None:
    """The published Llama-2-7b-chat value, or None where the paper has none."""
    return LLAMA2_7B_CHAT.get(dataset, {}).get(metric, {}).get(method)
