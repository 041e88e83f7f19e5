"""Drift signals: reference statistics of a version's inputs, and how a window of the log departs from them."""
