"""Runs: one run (fit / resume), zero-shot, sweeps, recipe comparisons, dry-run estimates."""
