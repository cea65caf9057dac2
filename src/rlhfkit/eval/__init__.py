"""Evaluation: held-out scores of a policy, before/after comparisons, plots."""
