"""The prediction log: the record (`record`), its writer (`writer`), rollups, upkeep, and reading
it back (`queries`, `router`)."""
