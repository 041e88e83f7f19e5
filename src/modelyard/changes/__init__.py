"""What changed, and which cache forgets it: services announce changes (`events`), workers of a
host share change counters (`epochs`), and the hot path's caches (`hotcache`) and the answers
kept for database outages (`outage`) drop what a change made stale."""
