"""Database: the async engine and sessions, the ORM tables and their migrations."""
