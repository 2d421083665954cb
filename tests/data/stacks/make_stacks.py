"""Write a saved edit stack of every entry kind that needs no trained artifact, for load tests.

    python tests/data/stacks/make_stacks.py tests/data/stacks/v0.2

writes ``base/`` (a tiny random Llama and its tokenizer), ``stack/`` (``model.stack.save``) and
``expected.safetensors`` / ``expected.json`` (what the stacked model computes on a few probes).
It uses the public API only (``EditableModel``, ``model.edit``, ``model.stack.save``), so the same
script makes the fixture of any release; ``tests/test_saved_stacks.py`` loads every committed
version with the current code and compares.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

PROBES = ["The Eiffel Tower is located in the city of", "The capital of France is", "Apple is a company"]
#: (context, continuation) pairs scored with ``loglikelihood`` (text-plane entries act there)
TEXT_PROBES = [("The Eiffel Tower is located in the city of", " Rome"), ("The capital of France is", " Paris")]
EDITS = [  # method, fact, hyperparameter overrides (small, so the script runs in seconds)
    ("rome", dict(prompt="The Eiffel Tower is located in the city of", subject="Eiffel Tower", target_new="Rome"),
     dict(v_num_grad_steps=5)),
    ("memit", [dict(prompt="The capital of France is", subject="France", target_new="Berlin"),
               dict(prompt="Apple is a company", subject="Apple", target_new="London")], dict(v_num_grad_steps=5)),
    ("ft-m", dict(prompt="Microsoft is a company of", target_new="Paris"), dict(num_steps=3)),
    ("lora", dict(prompt="Google is a company of", target_new="Rome"), dict(num_steps=3, rank=2)),
    ("grace", dict(prompt="The Eiffel Tower is in", target_new="London"), dict(n_iter=3)),
    ("wise", dict(prompt="The capital of Rome is", target_new="Apple"), dict(n_iter=3)),
    ("melo", dict(prompt="The city of Berlin is", target_new="Google"), dict(num_steps=3)),
    ("t-patcher", dict(prompt="London is the city of", target_new="Apple"), dict(num_steps=3, memory_texts=2)),
    ("ultraedit", dict(prompt="Paris is the capital of", target_new="Berlin"), {}),
    ("ice", dict(prompt="The Eiffel Tower is located in", target_new="Rome"), {}),
]


def build_base(out: Path) -> None:
    """A tiny random Llama with a byte-level BPE tokenizer, saved with ``save_pretrained``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = " ".join(f for _, f, _ in EDITS for f in ([f] if isinstance(f, dict) else f) for f in f.values())
    texts = [words, " ".join(PROBES), " ".join(c + w for c, w in TEXT_PROBES)] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)


def main(out: str) -> int:
    from safetensors.torch import save_file

    import editwrap
    from editwrap import EditableModel

    root = Path(out)
    build_base(root / "base")
    model = EditableModel.from_pretrained(str(root / "base"))
    with tempfile.TemporaryDirectory() as stats:
        os.environ["EDITWRAP_CACHE_STATS"] = stats  # no covariance statistics left in the user cache
        for method, facts, hp in EDITS:
            model.edit(facts, method=method, **hp)
    model.stack.save(root / "stack")
    enc = model.tokenizer(PROBES, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**enc).logits
    save_file({"logits": logits.contiguous(), "attention_mask": enc["attention_mask"]}, str(root / "expected.safetensors"))
    meta = {"editwrap_version": editwrap.__version__, "probes": PROBES, "methods": [m for m, _, _ in EDITS],
            "loglikelihood": [[c, w, model.loglikelihood(c, w)] for c, w in TEXT_PROBES]}
    (root / "expected.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    print(model.stack)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
