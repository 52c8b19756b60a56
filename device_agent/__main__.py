"""`python -m device_agent` is `fleet-agent`."""

from device_agent.cli import main

main()
