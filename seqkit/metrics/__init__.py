"""Evaluation metrics for sequence labelling."""
