"""SERAC: editing with a trained retrieval cache (``editwrap train serac``)."""
from .artifact import SeracArtifact, load_artifact
from .entry import CacheEntry
from .hparams import SERACHparams, SERACTrainConfig
from .method import SERAC
from .train import train_serac

__all__ = ["SERAC", "SERACHparams", "CacheEntry", "train_serac", "load_artifact", "SeracArtifact", "SERACTrainConfig"]
