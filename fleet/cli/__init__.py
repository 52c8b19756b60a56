"""Command-line wiring: the only place that reads files and the environment."""
