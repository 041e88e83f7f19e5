"""Predictions: the native and V2 protocols over one service, the prediction log, analytics."""
