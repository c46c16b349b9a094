"""tailtune's messages: the ``tailtune`` logger and the console the CLI gives it.

Every module logs to its own child (``logging.getLogger(__name__)``: ``tailtune.experiment``,
``tailtune.training.trainer``, ...). As Python's convention for libraries asks, the package logger has
only a :class:`logging.NullHandler`: a library caller sees nothing until they configure
logging (``logging.basicConfig(level=logging.INFO)`` shows the info lines;
``logging.getLogger("tailtune").setLevel(logging.WARNING)`` silences them). The CLI attaches
:func:`console` for the command it runs. A run's ``log.txt`` is written by the run itself
(rundir.RunDir.log), whatever the logger's level. Progress bars are tqdm's, not log lines.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

from tqdm.auto import tqdm

LOGGER = logging.getLogger("tailtune")  # its NullHandler is added by tailtune/__init__.py


class ConsoleHandler(logging.StreamHandler):
    """Each message as it is, one line on ``stream``, written around any progress bar (tqdm.write)."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except RecursionError:  # logging.StreamHandler.emit's contract: report, never raise
            raise
        except Exception:  # noqa: BLE001  (handleError prints it when logging.raiseExceptions)
            self.handleError(record)


@contextlib.contextmanager
def console(stream: TextIO | None = None, level: int = logging.INFO) -> Iterator[ConsoleHandler]:
    """tailtune's messages from ``level`` up on ``stream`` (default: sys.stdout as it is now) in the block.

    What the CLI does for the command it runs. The stream is looked up when the block starts, so
    a redirected or captured stdout (pytest's capsys) receives them. In the block the logger's
    level is lowered to ``level`` if it was higher, and its messages stop at this handler: not
    also on the root logger's handlers (open_clip's module-level ``logging.info`` calls set one
    up on stderr). Both are restored at the end.
    """
    handler = ConsoleHandler(sys.stdout if stream is None else stream)
    handler.setLevel(level)
    previous = LOGGER.level, LOGGER.propagate
    if LOGGER.getEffectiveLevel() > level:
        LOGGER.setLevel(level)
    LOGGER.propagate = False
    LOGGER.addHandler(handler)
    try:
        yield handler
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(previous[0])
        LOGGER.propagate = previous[1]
