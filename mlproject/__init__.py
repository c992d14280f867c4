"""Thin command-line entry points wired by the MLproject file."""
