"""Modelyard's tests."""

from modelyard.serving.probehost import keep_array_backends_out

# skops.io (imported by tests/serving/legit.py) would import torch, installed for the network
# tests, into every test process: ~1 GiB of address space and seconds, for nothing.
keep_array_backends_out()
