"""The embedded broker: amqtt 0.12.1, hardened for mTLS devices (`fleet-broker amqtt`)."""
