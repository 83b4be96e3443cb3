"""Prepaid credit control: balances debited as calls are rated, top-ups from a payment gateway,
the line locked and unlocked through the switch, and the money at risk between two runs.

The calls come from the same stages as the monthly bill (fetch, read, validate, rate with the
same tariff versions); this package only applies them to balances.
"""
