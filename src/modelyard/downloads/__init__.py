"""Signed download links: the route that serves them and the rules that keep them valid.

Above storage (`artifacts/`, which signs and serves bytes) and the registry: whether a link still
holds depends on its owner and, for a model artifact, on its version and model.
"""
