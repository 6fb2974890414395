"""Hardening tests: hostile peers over loopback, property-based fuzzing, TLS and trust."""
