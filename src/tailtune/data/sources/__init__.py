"""Dataset sources, one module each, registered in :data:`SOURCES` (``tailtune list datasets``).

Importing any of them (or this package) registers them all; ``base`` holds the registry, the
long-tailed dataset (:class:`LTData`) and the array-backed sources (CIFAR, Fashion-MNIST,
synthetic).
"""

from tailtune.data.sources import csv, folder, imagenet_lt, inat, places_lt  # noqa: F401  (registration)
from tailtune.data.sources.base import SOURCES, LTData, build_data

__all__ = ["SOURCES", "LTData", "build_data"]
