"""The command line wired by the MLproject file.

Each module parses arguments and calls one stage function of :mod:`benchmark.stages`; errors a
user can cause become one line and exit code 2.
"""
