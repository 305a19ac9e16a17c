"""Evaluation: base and checkpoints scored on held-out samples with task metrics, intervals and paired tests."""
