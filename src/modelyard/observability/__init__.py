"""Observability: structured logs, the request middleware, health checks and metrics."""
