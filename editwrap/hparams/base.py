"""Base class of all method hyperparameters."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["HparamsBase"]


class HparamsBase(BaseModel):
    """Unknown names are errors (a typo must not be silently ignored); assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
