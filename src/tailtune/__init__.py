"""tailtune: long-tailed image classification with foundation models and lightweight fine-tuning.

The public API: compose a config (:func:`load_config`), build its experiment (:func:`build`),
train and evaluate a run (:func:`fit`, :func:`resume`), rebuild a finished run
(:func:`load_run`, :func:`evaluate`), zero-shot CLIP (:func:`zeroshot`), predict
(:func:`load`), export (:func:`export_run`) and report (:func:`write_report`,
:func:`compare_runs`).
"""

import logging

from tailtune.version import __version__

# A library's logger: silent until the caller configures logging (the CLI does, runtime.logs).
logging.getLogger(__name__).addHandler(logging.NullHandler())

from tailtune.config import Config, load_config  # noqa: E402
from tailtune.errors import CheckpointError, ConfigError, DataError, TailtuneError  # noqa: E402
from tailtune.experiment import build, load_run, validate  # noqa: E402
from tailtune.inference.export import export_run  # noqa: E402
from tailtune.inference.predict import Predictor, load  # noqa: E402
from tailtune.report.compare import compare_runs  # noqa: E402
from tailtune.report.html import write_report  # noqa: E402
from tailtune.runs.run import evaluate, fit, resume  # noqa: E402
from tailtune.runs.zeroshot import zeroshot  # noqa: E402

__all__ = ["Config", "load_config", "build", "validate", "fit", "resume", "evaluate", "load_run", "zeroshot",
           "load", "Predictor", "write_report", "compare_runs", "export_run", "TailtuneError", "ConfigError",
           "DataError", "CheckpointError", "__version__"]
