"""The browser side: the dashboard (pages, templates, static files) and the API docs."""
