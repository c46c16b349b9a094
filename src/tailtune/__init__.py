"""tailtune: long-tailed image classification with foundation models and lightweight fine-tuning."""

__version__ = "0.1.0"

import logging  # noqa: E402

# A library's logger: silent until the caller configures logging (the CLI does, tailtune.logs).
logging.getLogger(__name__).addHandler(logging.NullHandler())

from .api import build, evaluate, fit, load_run, zeroshot  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import CheckpointError, ConfigError, DataError, TailtuneError  # noqa: E402
from .export import export_run  # noqa: E402
from .predict import Predictor, load  # noqa: E402
from .report import compare_runs, write_report  # noqa: E402

__all__ = ["Config", "load_config", "build", "fit", "evaluate", "load_run", "zeroshot",
           "load", "Predictor", "write_report", "compare_runs", "export_run", "TailtuneError", "ConfigError", "DataError", "CheckpointError", "__version__"]
