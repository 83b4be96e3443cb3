"""The Billing page of the Airflow UI: what it reads (`queries`), how it looks (`pages`), and
the FastAPI app behind Airflow's auth that serves it (`app`, mounted by
plugins/cdr_billing_ui.py)."""
