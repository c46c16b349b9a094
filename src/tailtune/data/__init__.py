"""Data: sources (registry ``SOURCES``), datasets, long-tail arithmetic, transforms."""

# Importing the source modules registers them in SOURCES (sources.py holds the registry).
from . import csv_source, folder, imagenet_lt, inat, places_lt  # noqa: F401
