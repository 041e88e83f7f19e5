"""Each user's own file area in the artifact store: datasets, reports, extra artifacts."""
