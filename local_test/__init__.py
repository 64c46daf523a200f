"""Harness helpers and sample data for running the toolkit locally."""
