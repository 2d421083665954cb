"""Score an editing method on KnowEdit records from Python, on a GPU when there is one.

    editwrap data knowedit --only ZsRE                                   # once: the file from the Hub
    python examples/knowedit_eval.py [--method ft-m] [--n 3] [--data knowedit:ZsRE]
    python examples/knowedit_eval.py --n 6 --sequential --stop-after 3   # edits accumulate; stop at 3
    python examples/knowedit_eval.py --n 6 --sequential                  # ... and go on to 6

Each record is edited, scored with EasyEdit's metrics (Edit Succ., rephrase, portability,
locality), popped and checked bit-exact. Lines stream to results-example/zsre-<method>-single.jsonl.
Stop it at any point and run it again: it resumes where it stopped, on this machine or any other
holding the same data and model. `editwrap report` shows a run still in progress as well.
``--sequential`` keeps the edits on the stack (checkpoints at 3 and n); ``--stop-after 3`` ends the
process there, and the summary of the run that finishes adds up every process's time.
``--data`` takes a file or a dataset name; ``knowedit:ZsRE`` is found in ``$EDITWRAP_DATA_DIR`` (a local
copy) or the Hugging Face cache (docs/data.md).
"""
from __future__ import annotations

import argparse

import torch

from editwrap import EditableModel
from editwrap.evals import run_knowedit
from editwrap.evals.report import build_report

DATA = "knowedit:ZsRE"  # the KnowEdit ZsRE test file (Hugging Face Hub dataset zjunlp/KnowEdit)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", default="ft-m")
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--out", default="results-example")
    ap.add_argument("--sequential", action="store_true")
    ap.add_argument("--stop-after", type=int, default=None)
    a = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = EditableModel.from_pretrained(device_map=device)  # the embedded SmolLM2-135M-Instruct
    mode = "sequential" if a.sequential else "single"
    s = run_knowedit(model, "zsre", a.data, a.method, n=a.n, out=a.out, progress=False, mode=mode,
                     checkpoints=[3], stop_after=a.stop_after)
    m = s["metrics"]
    print(f"{a.method} on {m['n']} ZsRE records ({s['device']}): Edit Succ. {m['Edit Succ.']:.2f}, "
          f"rephrase {m['Rephrase']:.2f}, locality {m['Locality']:.2f}, every pop bit-exact: {s['bit_exact']}")
    if "processes" in s:
        print(f"{s['total_wall_seconds']:.1f} s over {s['processes']} process(es)"
              + (f"; stopped after {s['stopped_after']} edits" if s.get("stopped_after") else ""))
    build_report([a.out], a.out)
    print(f"table: {a.out}/report.md")
