"""Use-cases: enroll, re-enroll, approve, revoke. They depend on protocols
(Store, Clock) and the pure cores, never on a concrete backend or HTTP."""
