"""Evaluation of a trained run against the baselines (``crforge evaluate``)."""
