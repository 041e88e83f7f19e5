"""Use cases over a whole account, across domains: erasing one, and what an admin sees of one.

Each domain does its own part through its service or queries (auth the user row, registry the
models, predictions the log...): nothing here runs SQL on another domain's tables.
"""
