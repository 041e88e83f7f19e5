"""Teams: groups of users with roles, and what each role may do."""
