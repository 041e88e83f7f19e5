"""Compare: 2 to 10 runs or model versions side by side, with differences marked."""
