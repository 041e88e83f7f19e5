"""Authentication: users, Argon2id passwords, JWT access and refresh tokens, API keys."""
