"""What the locate-then-edit methods (ROME, MEMIT, AlphaEdit, PMET) share: their common
hyperparameters and default layer choices. The math they share (key/value capture, value
optimisation, covariance statistics, the layer spread) is in :mod:`editwrap.ops`."""
from .hparams import LocateHparams, key_dim, spread_defaults

__all__ = ["LocateHparams", "spread_defaults", "key_dim"]
