"""HTTP helpers shared by the route modules and the server wiring (imports neither)."""
