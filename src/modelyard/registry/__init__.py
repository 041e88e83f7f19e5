"""The model registry: models, versions, lifecycle stages, aliases, uploads and downloads."""
