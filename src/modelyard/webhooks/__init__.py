"""Webhooks: registry events of a user's models, POSTed to the user's URLs and signed."""
