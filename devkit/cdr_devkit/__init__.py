"""Local stand-ins for a deployment: sample data, SFTP/SMTP/PostgreSQL servers, the demo.

Used by `make demo`, `make standalone` and the tests; never by the pipeline itself.
"""
