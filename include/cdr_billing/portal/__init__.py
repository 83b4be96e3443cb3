"""The self-service portal: a small web app of its own, for the people who make the calls (not
Airflow users), where they sign in by a link mailed to their address and see their balance and
line lock, this month's calls, their statements and top-ups, and top up a prepaid line.

`python -m cdr_billing.portal --host H --port P [--tls-cert F --tls-key F]` (docs/portal.md).
"""
