"""SERAC: editing with a trained retrieval cache (``editwrap train serac``)."""
from .artifact import SeracArtifact, load_artifact
from .entry import SeracEntry
from .hparams import SeracHparams, SeracTrainConfig
from .method import Serac
from .train import train_serac

__all__ = ["Serac", "SeracHparams", "SeracEntry", "train_serac", "load_artifact", "SeracArtifact", "SeracTrainConfig"]
