"""The HTTPS server: TLS, aiohttp application wiring, workers, metrics and logs."""
