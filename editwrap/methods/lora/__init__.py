"""LoRA / AdaLoRA editing: a PEFT adapter trained on the facts."""
from .hparams import LoRAHparams
from .method import LoRA, AdaLoRA

__all__ = ["LoRAHparams", "LoRA", "AdaLoRA"]
