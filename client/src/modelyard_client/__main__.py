"""`python -m modelyard_client`: the `modelyard` command."""

from modelyard_client.cli import main

main()
