"""The machines a run uses: SSH, deploy, fleets of agents, link shaping, ownership records, routes, emulation."""
