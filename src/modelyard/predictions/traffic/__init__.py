"""Traffic policies: the split of requests naming no version between versions, and the
shadow version (`policy`); routing a request by them (`routing`); how the versions compared
(`stats`); their routes (`router`)."""
