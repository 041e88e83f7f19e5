"""The browser tests' admin account (created on their live server by `modelyard create-admin`)."""

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "admin password of the browser tests"
