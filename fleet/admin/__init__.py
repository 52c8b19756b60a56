"""The admin REST API (/api/v1): devices, certificates, revocation, manifest, trust, audit."""
