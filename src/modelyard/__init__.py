"""Modelyard: a self-hosted model registry and serving platform."""

__version__ = "0.1.0"
