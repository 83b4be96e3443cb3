"""The "Billing" page of the Airflow UI: a FastAPI app mounted under /billing and a nav entry
that shows it inside the UI (the app and its pages live in include/cdr_billing/ui)."""

from __future__ import annotations

from base64 import b64encode

from airflow.plugins_manager import AirflowPlugin

from cdr_billing.ui.app import app


def _icon(colour: str) -> str:
    """A small bar chart icon as a data URL."""
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="{colour}" stroke-width="2" '
        'stroke-linecap="round"><path d="M4 20h16M7 16v-5M12 16V6M17 16v-8"/></svg>'
    )
    return "data:image/svg+xml;base64," + b64encode(svg.encode()).decode()


class CdrBillingUiPlugin(AirflowPlugin):
    """Mounts the Billing app and adds "Billing" to the UI's navigation."""

    name = "cdr_billing_ui"
    fastapi_apps = [{"app": app, "url_prefix": "/billing", "name": "Billing"}]
    external_views = [
        {
            "name": "Billing",
            "href": "/billing/",
            "destination": "nav",
            "url_route": "billing",
            "nav_top_level": True,
            "icon": _icon("#4a5568"),
            "icon_dark_mode": _icon("#e2e8f0"),
        }
    ]
