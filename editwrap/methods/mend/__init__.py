"""MEND: editing with a trained editor network (``editwrap train mend``)."""
from .hparams import MENDHparams, MENDTrainConfig
from .method import MEND, load_editor
from .model import MENDEditor
from .train import train_mend

__all__ = ["MEND", "MENDHparams", "MENDEditor", "train_mend", "load_editor", "MENDTrainConfig"]
