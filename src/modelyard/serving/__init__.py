"""Loading uploaded models safely, probing them in child processes, and serving them."""
