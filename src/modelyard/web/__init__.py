"""The browser side: the interactive API docs (and, later, the dashboard)."""
