"""MEND: editing with a trained editor network (``editwrap train mend``)."""
from .hparams import MendHparams, MendTrainConfig
from .method import Mend, load_editor
from .model import MendEditor
from .train import train_mend

__all__ = ["Mend", "MendHparams", "MendEditor", "train_mend", "load_editor", "MendTrainConfig"]
