"""Token helpers shared by methods and evals: where the subject ends, how targets tokenise."""
from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["target_ids", "subject_last_index", "batch_encode", "check_tokenizer_files"]


def target_ids(tok: Any, target: str) -> list[int]:
    """Token ids of a target as it follows a prompt: with one leading space, no special tokens."""
    ids = tok(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenises to nothing")
    return ids


def subject_last_index(tok: Any, prompt: str, subject: str) -> int:
    """Index of the subject's last token in ``tok(prompt)`` (its last occurrence's end).

    Tokenising the prefix up to the end of the subject gives the count, which stays right for
    BPE merges across the boundary as long as the subject ends at a word boundary.
    """
    pos = prompt.rfind(subject)
    if pos < 0:
        raise ValueError(f"subject {subject!r} not in prompt {prompt!r}")
    prefix = prompt[: pos + len(subject)]
    return len(tok(prefix)["input_ids"]) - 1


def batch_encode(tok: Any, texts: list[str], device: torch.device | str) -> dict[str, torch.Tensor]:
    """Right-padded batch (so position i of each row is token i of that text); the shared
    tokenizer's own ``padding_side`` is left alone (threads may use it at the same time)."""
    return tok(texts, return_tensors="pt", padding=True, padding_side="right").to(device)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model",
                    "vocab.txt")


def check_tokenizer_files(path: str) -> None:
    """A local model folder without any tokenizer file: say how to pass one (transformers would end
    in an error about converting a slow tokenizer)."""
    if os.path.isdir(path) and not any(os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        raise ValueError(
            f"model folder {path} has no tokenizer (none of {', '.join(_TOKENIZER_FILES)}). Pass one: "
            "EditableModel.from_pretrained(path, tokenizer=<folder or hub id of the base model's tokenizer, or a "
            "tokenizer object>) or EditableModel.wrap(model, tokenizer), or save it beside the weights "
            "(tokenizer.save_pretrained(path)); "
            "`editwrap export merged` writes model and tokenizer together")
