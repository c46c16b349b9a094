"""The command-line interface (``tailtune``); ``python -m tailtune.cli`` runs it too."""

from tailtune.cli.app import main

__all__ = ["main"]
