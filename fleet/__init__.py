"""fleet: enrollment, certificate lifecycle and broker enforcement for IoT fleets."""

__version__ = "0.1.0"
