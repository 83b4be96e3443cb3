"""CDR billing: turn providers' call detail records into monthly billing lines.

One module per stage: acquire, read, validate, rate, attribute, aggregate, load, report.
Plain functions on files and data frames; Airflow calls them through `tasks`.
"""
