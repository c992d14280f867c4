"""The reporting stage: the leaderboard and the report.

The leaderboard tables are read back from MLflow
(:mod:`~benchmark.reporting.leaderboard`) and the report written from them
(:mod:`~benchmark.reporting.report`: HTML from a Jinja2 template, Markdown, CSV, PNG figures).
"""
