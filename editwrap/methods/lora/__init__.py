"""LoRA / AdaLoRA editing: a PEFT adapter trained on the facts."""
from .hparams import LoraHparams
from .method import Lora, AdaLora

__all__ = ["LoraHparams", "Lora", "AdaLora"]
