"""Evaluation: a model's predictions on a split, the metrics, the train-vs-test gap."""
