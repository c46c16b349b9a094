"""Reports: the run's HTML report and comparisons, plots, text tables, sweep pages."""
