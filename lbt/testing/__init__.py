"""Helpers for tests and benchmarks only (fake datasets); never imported by training code."""
