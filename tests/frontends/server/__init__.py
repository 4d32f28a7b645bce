"""Tests of `mistralrs serve`: real servers on loopback ports, driven by the openai SDK."""
