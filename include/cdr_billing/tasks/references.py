"""load_references: the month's tariff version and entitlement snapshot, beside the files'
validation."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from cdr_billing import database, entitlements, tariff
from cdr_billing.config import PipelineConfig, load_config
from cdr_billing.contracts import FetchedMonth, References

log = logging.getLogger(__name__)


def load_references(fetched: FetchedMonth, config: PipelineConfig | None = None) -> References:
    """Store the month's tariff as a version (a known file keeps its version) and pin its
    entitlement snapshot (captured once, or again when the run asks for a fresh one)."""
    config = config or load_config()
    settings, now = config.entitlement_source, datetime.now(UTC)
    engine = database.billing_engine(config.billing.connection)
    tariff_version = load_tariff(fetched, config)
    by_date = sorted((Path(f.local_path) for f in fetched.of_role("entitlements")), key=_name)
    for path in by_date[:-1]:  # the month's history; the newest is what a month pins
        entitlements.store(engine, entitlements.from_file(path, now, config.billing.timezone))

    def capture() -> entitlements.Snapshot:
        if settings.source == "sql":
            return entitlements.from_query(settings.connection, settings.query, now)
        return entitlements.from_file(by_date[-1], now, config.billing.timezone)

    run = fetched.run
    snapshot_id = entitlements.snapshot_for_month(
        engine, run.billing_month, capture, run.refresh_entitlements
    )
    log.info("tariff version %d, entitlement snapshot %d", tariff_version, snapshot_id)
    return References(tariff_version, snapshot_id)


def load_tariff(fetched: FetchedMonth, config: PipelineConfig) -> int:
    """Store the month's tariff as a version (a known file keeps its version); return it."""
    engine = database.billing_engine(config.billing.connection)
    tariff_file = fetched.of_role("tariff")[0]  # the month's one tariff
    return tariff.load_file(engine, Path(tariff_file.local_path), config.billing)


def _name(path: Path) -> str:
    return path.name  # a snapshot file's name carries its date
