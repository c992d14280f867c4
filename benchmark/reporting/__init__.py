"""The reporting stage: the leaderboard and the report.

The leaderboard tables are read back from MLflow and ranked (:mod:`~benchmark.reporting.leaderboard`),
turned into display tables (:mod:`~benchmark.reporting.tables`) and figures
(:mod:`~benchmark.reporting.charts`), and written by :mod:`~benchmark.reporting.report`: HTML and
Markdown from the Jinja2 templates in ``templates/`` (HTML auto-escaped), CSV and PNG, in a folder
marked as a report so that only a report is ever replaced.
"""
