"""Dataset sources, one module each, registered in :data:`SOURCES` (``tailtune list datasets``).

Importing any of them (or this package) registers them all; ``base`` holds the registry, the
long-tailed dataset (:class:`LTData`) and :func:`build_data`.
"""

from tailtune.data.sources import (  # noqa: F401  (registration)
    cifar,
    csv,
    fashion_mnist,
    folder,
    imagenet_lt,
    inat,
    places_lt,
    synthetic,
)
from tailtune.data.sources.base import SOURCES, LTData, build_data

__all__ = ["SOURCES", "LTData", "build_data"]
