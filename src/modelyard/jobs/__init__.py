"""Batch prediction jobs: a file of the caller's scored by a model version in the background."""
