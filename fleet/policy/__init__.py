"""Pure enrollment policy: who may get a certificate, decided from records, never I/O."""
