"""The "Billing" page of the Airflow UI: a FastAPI app mounted under /billing and a nav entry
that shows it inside the UI (the app and its pages live in include/cdr_billing/ui)."""

from __future__ import annotations

from base64 import b64encode

from airflow.plugins_manager import AirflowPlugin

from cdr_billing.ui import ui_timezone
from cdr_billing.ui.app import app
from cdr_billing.ui.web import config


def _icon() -> str:
    """A bar chart icon as a data URL: light bars with a dark outline, visible on light and dark
    backgrounds."""
    bars = "".join(
        f'<rect x="{x}" y="{y}" width="4" height="{19 - y}" rx="1"/>'
        for x, y in ((4, 11), (10, 5), (16, 8))
    )
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" '
        'fill="#bee3f8" stroke="#1a365d" stroke-width="1.5">'
        f'{bars}<path d="M2 21.5h20" fill="none"/></svg>'
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
            "icon": _icon(),
        }
    ]
    # The UI in the billing timezone for a browser without a chosen zone (opt-in setting).
    fastapi_root_middlewares = ui_timezone.middlewares(
        config().billing.timezone, config().billing.ui_timezone_default
    )
