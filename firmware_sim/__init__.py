"""The firmware simulator: factory, simulated devices, scenarios and the demo."""
