"""Prepare the GPU jobs (benchmarks/gpu/run.sh): load the embedded model once (its GGUF is converted
and cached on first use) and compute the covariance statistics ROME and MEMIT use, once per
precision, so that the jobs started in parallel afterwards read them from the cache instead of
each computing (and writing) the same files.

    python benchmarks/gpu/prepare.py --device cuda [--int8]
"""
from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--int8", action="store_true", help="also the 8-bit (bitsandbytes) model's statistics")
    a = ap.parse_args()

    from editwrap import EditableModel
    from editwrap.arch import arch_of
    from editwrap.methods.base import get_method
    from editwrap.ops.covariance import second_moment

    for int8 in (False, True) if a.int8 else (False,):
        t0 = time.time()
        kw = {"device_map": a.device}
        if int8:
            from transformers import BitsAndBytesConfig

            kw["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        m = EditableModel.from_pretrained(None, **kw)
        hp = get_method("memit").default_hparams(m)
        layers = sorted(set(hp.layers) | {get_method("rome").default_hparams(m).layer})
        mods = [arch_of(m).mlp_out_at(i) for i in layers]
        second_moment(m, mods, corpus=hp.mom2_corpus, n_tokens=hp.mom2_n_tokens, progress=False)
        print(f"statistics ready ({'int8' if int8 else 'fp32'}, layers {layers}) in {time.time() - t0:.0f} s",
              flush=True)
        del m


if __name__ == "__main__":
    main()
