"""Experiments: runs with parameters, tags, metric history and the model versions they produced."""
