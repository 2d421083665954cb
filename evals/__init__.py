"""KnowEdit evaluation: dataset loaders (-> editwrap Facts) and EasyEdit-compatible metrics."""
from .datasets import *  # noqa: F401,F403
from .datasets import __all__ as _datasets_all
from .metrics import *  # noqa: F401,F403
from .metrics import __all__ as _metrics_all

__all__ = [*_datasets_all, *_metrics_all]
from .runner import run_knowedit  # noqa: E402,F401
from .report import build_report  # noqa: E402,F401
from editwrap.hub import DataNotFoundError, fetch, resolve_data  # noqa: E402,F401
