"""The HTTP edge: the bounded HTTP/1.1 protocol `modelyard serve` runs (`server`), the strict
JSON route class of every router (`routing`) and what the current request is (`context`)."""
