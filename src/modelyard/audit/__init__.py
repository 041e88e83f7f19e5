"""The audit log: who did what, when and from where, hash-chained so that a change shows."""
