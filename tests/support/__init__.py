"""Helpers shared by the test suite: real third-party programs on free loopback ports."""
