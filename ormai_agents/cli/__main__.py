"""`python -m ormai_agents.cli`: the same as the `ormai-agents` command."""

from ormai_agents.cli import main

main()
