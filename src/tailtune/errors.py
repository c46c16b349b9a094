"""User-facing errors: each says what is wrong, where, and what to do."""


class TailtuneError(Exception):
    """An error caused by input (config, data, checkpoint) that the user can fix.

    The CLI prints these without a traceback; everything else is a bug.
    """


class ConfigError(TailtuneError, ValueError):
    """A config key or value is unknown, mistyped or out of range."""


class DataError(TailtuneError):
    """Dataset files are missing, malformed or inconsistent."""


class CheckpointError(TailtuneError):
    """A checkpoint is missing, truncated or belongs to another model."""


class WriteError(TailtuneError):
    """A file could not be written (disk full, read-only folder, no permission, quota).

    ``path`` is the file; the message says why, what was kept and the command that continues.
    """

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path


class FolderInUse(TailtuneError):
    """Another process holds the lock of a run folder (runtime/rundir.py RunLock)."""
