"""editwrap: model-editing middleware for Hugging Face models with an exact, reversible edit stack."""
from ._version import __version__

from .facts import Fact, FactError, Probe, load_facts
from .stack import Edit, EditStack, StackError
from .methods import METHODS, get_method, register_method
from .model import EditableModel
from .ops.fingerprint import state_dict_hash

__all__ = ["EditableModel", "Fact", "Probe", "FactError", "Edit", "EditStack", "StackError", "METHODS",
           "get_method", "register_method", "load_facts", "state_dict_hash", "__version__"]
