"""Broker enforcement: certificate checks, topic ACLs and live revocation for MQTT brokers."""
