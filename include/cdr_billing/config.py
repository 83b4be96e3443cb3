"""Deployment settings and source profiles, read from YAML."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
CONFIG_ENV = "CDR_BILLING_CONFIG"
# The monthly DAG (dags/cdr_billing_monthly.py), which the run notes, run records and pages name
BILLING_DAG_ID = "cdr_billing_monthly"
# Overrides sftp.stable_seconds: for local demos and tests, whose files are complete before the
# servers start.
STABLE_SECONDS_ENV = "CDR_BILLING_STABLE_SECONDS"
DEFAULT_STABLE_SECONDS = 60


class ConfigError(ValueError):
    """The pipeline configuration is invalid."""


@dataclass(frozen=True)
class RemoteFiles:
    """Files on the SFTP servers: a directory and a shell-style name pattern."""

    remote_dir: str
    pattern: str

    def pattern_for(self, month: str) -> str:
        """Return the pattern with {yyyy} and {mm} filled in for a YYYY-MM month."""
        yyyy, mm = month.split("-")
        return self.pattern.format(yyyy=yyyy, mm=mm)


@dataclass(frozen=True)
class CdrSource(RemoteFiles):
    """A provider's monthly CDR delivery and the profile that reads it."""

    name: str = ""
    profile: str = ""
    processed_dir: str | None = None  # move billed files here on the server that delivered them
    markup_percent: str = "0"  # added to a priced source's own costs, e.g. "12.5"
    # e.g. "{name}.done": a file is fetched once this file exists beside it
    done_marker: str | None = None
    require_sidecar: bool = False  # a file is fetched once its .sha256/.md5 sidecar exists


@dataclass(frozen=True)
class SourceProfile:
    """How one provider's file maps onto the canonical CDR schema."""

    name: str
    format: str
    columns: dict[str, str]
    priced: bool
    timezone: str = "UTC"
    timestamp_format: str | None = None  # strptime format; None: ISO 8601 or Excel serial dates
    duration_unit: str = "seconds"  # seconds, minutes or hms ("1:02:03")
    decimal: str = "."  # decimal separator of numbers in the file
    sheet: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"
    defaults: dict[str, str] = field(default_factory=dict)
    # provider value -> canonical value
    value_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    # a negative provider cost is a credit (else the row is NEGATIVE_COST)
    allow_credits: bool = False
    # a local time the autumn clock change repeats: earliest, latest or reject
    ambiguous_times: str = "earliest"


@dataclass(frozen=True)
class EntitlementSettings:
    """Where the entitlement snapshot comes from."""

    source: str
    connection: str
    query: str
    stale_after_days: int


@dataclass(frozen=True)
class BillingSettings:
    """Rules of the billing stages."""

    connection: str
    timezone: str
    country_code: str
    national_prefix: str
    international_prefix: str
    max_call_seconds: int
    month_tolerance_hours: float
    max_rejected_share: float
    price_check_tolerance_percent: float = 5.0
    # the Airflow UI shows times (and reads backfill dates) in `timezone` until a user picks one
    ui_timezone_default: bool = False


@dataclass(frozen=True)
class PrepaidSettings:
    """Prepaid credit control (the DAG cdr_prepaid_balances; docs/prepaid.md)."""

    interval_minutes: int = 30  # how often balances are updated: chosen from the exposure
    topup_holdoff_minutes: int = 60  # after a declined top-up, no other request for this long
    gateway_connection: str = "payment_gateway"
    gateway_connect_timeout_seconds: float = 5.0
    gateway_read_timeout_seconds: float = 20.0
    switch_connection: str = "prepaid_switch"
    max_call_seconds: int | None = None  # the longest call a source allows; None: from the data
    exposure_limit: dict[str, str] = field(default_factory=dict)  # currency -> amount ("500.00")


DELIVERY_METHODS = ("pdf", "link", "none")


@dataclass(frozen=True)
class CustomerStatements:
    """One customer's statements: how many last digits of a called number are hidden (0: shown
    in full, where the customer's policy allows it) and how they reach the users."""

    mask_digits: int = 3
    deliver: str = "none"  # pdf: mailed as an attachment | link: a link to the portal | none


@dataclass(frozen=True)
class StatementSettings:
    """Itemised statements per billed user and month (docs/statements.md), for the customers
    listed only."""

    customers: dict[str, CustomerStatements] = field(default_factory=dict)
    from_address: str | None = None  # None: the SMTP connection's from_email
    portal_url: str | None = None  # the self-service portal, for deliver: link
    retry_minutes: float = 10.0  # a deferred mail is tried again after this, doubled each time
    max_attempts: int = 5  # then a deferred mail is given up (bounced)
    sending_stale_minutes: float = 15.0  # a claim this old without an outcome: unknown

    def of(self, customer_id: str) -> CustomerStatements | None:
        """The customer's statement settings, None when it does not opt in."""
        return self.customers.get(customer_id)


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a deployment can change, in one object."""

    sftp_connections: tuple[str, ...]
    connect_timeout_seconds: int
    stable_seconds: float  # a file without a done marker is fetched once unchanged for this long
    files_deadline_days: int
    poke_interval_minutes: int
    sources: tuple[CdrSource, ...]
    tariff: RemoteFiles
    entitlements: RemoteFiles
    entitlement_source: EntitlementSettings
    billing: BillingSettings
    work_root: str  # a local folder or an object storage URL (s3://, gs://, file://...)
    work_connection: str | None  # the Airflow connection of that object storage, if it needs one
    archive_root: Path
    files_at_once: int  # mapped file tasks of one run at a time
    smtp_connection: str
    alert_to: tuple[str, ...]
    finance_to: tuple[str, ...]
    alert_recipients: dict[str, tuple[str, ...]]
    billing_file_columns: dict[str, str]
    profiles: dict[str, SourceProfile]
    prepaid: PrepaidSettings = field(default_factory=PrepaidSettings)
    months_at_once: int = 3  # runs of the monthly DAG at a time (its max_active_runs)
    statements: StatementSettings = field(default_factory=StatementSettings)

    def markups(self) -> dict[str, int]:
        """Markup per source in basis points (1 % = 100)."""
        from cdr_billing.money import percent_to_basis_points

        return {s.name: percent_to_basis_points(s.markup_percent) for s in self.sources}

    def recipients(self, kind: str) -> tuple[str, ...]:
        """Who gets an alert of this kind: its own list, else `alerts.to` (the month report:
        finance)."""
        default = self.finance_to if kind == "month_report" else self.alert_to
        return self.alert_recipients.get(kind, default)

    def profile_for(self, source_name: str) -> SourceProfile:
        """Return the source profile of a configured source."""
        source = next(s for s in self.sources if s.name == source_name)
        return self.profiles[source.profile]


def _read_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def load_profiles(path: Path) -> dict[str, SourceProfile]:
    """Read the source profiles file."""
    raw = _read_yaml(path)
    profiles = {}
    for name, spec in raw.items():
        if spec.get("format") not in ("xlsx", "csv"):
            raise ConfigError(f"profile {name}: format must be xlsx or csv")
        if spec.get("duration_unit", "seconds") not in ("seconds", "minutes", "hms"):
            raise ConfigError(f"profile {name}: duration_unit must be seconds, minutes or hms")
        if spec.get("ambiguous_times", "earliest") not in ("earliest", "latest", "reject"):
            raise ConfigError(f"profile {name}: ambiguous_times must be earliest, latest or reject")
        profiles[name] = SourceProfile(name=name, **spec)
    return profiles


# The alert kinds `alerts.recipients` may route (see alerts.py).
ALERT_KINDS = (
    "task_failure",
    "failover",
    "held_file",
    "files_not_arrived",
    "validation",
    "unbillable",
    "suspense",
    "month_report",
    "topup_declined",
    "line_locked",
    "webhook_failing",
    "exposure",
)


def _alert_recipients(path: Path, raw: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    unknown = sorted(set(raw) - set(ALERT_KINDS))
    if unknown:
        raise ConfigError(
            f"{path}: alerts.recipients has unknown kinds {unknown}; known: {list(ALERT_KINDS)}"
        )
    return {kind: tuple(addresses) for kind, addresses in raw.items()}


DEFAULT_FILES_AT_ONCE = 2
DEFAULT_MONTHS_AT_ONCE = 3


def _positive(path: Path, key: str, value: Any) -> int:
    """A setting that must be a whole number of at least 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{path}: {key} must be a whole number of at least 1, not {value!r}")
    return value


def _stable_seconds(path: Path, raw: dict[str, Any]) -> float:
    """sftp.stable_seconds ($CDR_BILLING_STABLE_SECONDS wins): a number of at least 0."""
    value = os.environ.get(STABLE_SECONDS_ENV) or raw.get("stable_seconds", DEFAULT_STABLE_SECONDS)
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1
    if seconds < 0:
        raise ConfigError(
            f"{path}: sftp.stable_seconds must be a number of seconds of at least 0, not {value!r}"
        )
    return seconds


def _cdr_source(path: Path, spec: dict[str, Any]) -> CdrSource:
    """A source; its done marker must name the file it marks."""
    source = CdrSource(**spec)
    if source.done_marker is not None and "{name}" not in source.done_marker:
        raise ConfigError(
            f'{path}: source {source.name}: done_marker must contain {{name}}, e.g. "{{name}}.done"'
        )
    return source


def load_config(path: Path | None = None) -> PipelineConfig:
    """Read the pipeline configuration ($CDR_BILLING_CONFIG or the shipped default)."""
    path = Path(path or os.environ.get(CONFIG_ENV) or CONFIG_DIR / "pipeline.yaml")
    raw = _read_yaml(path)
    profiles = load_profiles(path.parent / raw.get("profiles_file", "profiles.yaml"))
    sources = tuple(_cdr_source(path, spec) for spec in raw["sources"])
    if raw["entitlements"]["source"] not in ("file", "sql"):
        raise ConfigError(f"{path}: entitlements.source must be file or sql")
    unknown = [s.profile for s in sources if s.profile not in profiles]
    if unknown:
        raise ConfigError(f"{path}: sources use unknown profiles {unknown}")
    return PipelineConfig(
        sftp_connections=tuple(raw["sftp"]["connections"]),
        connect_timeout_seconds=int(raw["sftp"]["connect_timeout_seconds"]),
        stable_seconds=_stable_seconds(path, raw["sftp"]),
        files_deadline_days=int(raw["sftp"]["files_deadline_days"]),
        poke_interval_minutes=int(raw["sftp"]["poke_interval_minutes"]),
        sources=sources,
        tariff=RemoteFiles(**raw["reference"]["tariff"]),
        entitlements=RemoteFiles(**raw["reference"]["entitlements"]),
        entitlement_source=EntitlementSettings(**raw["entitlements"]),
        billing=BillingSettings(**raw["billing"]),
        work_root=os.path.expandvars(raw["work_root"]),
        work_connection=raw.get("work_connection"),
        archive_root=Path(os.path.expandvars(raw["archive_root"])),
        files_at_once=_positive(
            path, "files_at_once", raw.get("files_at_once", DEFAULT_FILES_AT_ONCE)
        ),
        smtp_connection=raw["alerts"]["smtp_connection"],
        alert_to=tuple(raw["alerts"]["to"]),
        finance_to=tuple(raw["alerts"]["finance_to"]),
        alert_recipients=_alert_recipients(path, raw["alerts"].get("recipients") or {}),
        billing_file_columns=dict(raw["billing_file"]["columns"]),
        profiles=profiles,
        prepaid=_prepaid(path, raw.get("prepaid") or {}),
        months_at_once=_positive(
            path, "months_at_once", raw.get("months_at_once", DEFAULT_MONTHS_AT_ONCE)
        ),
        statements=_statements(path, raw.get("statements") or {}),
    )


def _prepaid(path: Path, raw: dict[str, Any]) -> PrepaidSettings:
    """The prepaid section; unknown keys and non-positive intervals are refused."""
    known = {f.name for f in fields(PrepaidSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: prepaid has unknown keys {unknown}; known: {sorted(known)}")
    for key in ("interval_minutes", "topup_holdoff_minutes"):
        if key in raw:
            _positive(path, f"prepaid.{key}", raw[key])
    limits = {str(k).upper(): str(v) for k, v in (raw.get("exposure_limit") or {}).items()}
    return PrepaidSettings(**{**raw, "exposure_limit": limits})


def _customer_statements(path: Path, customer: str, raw: dict[str, Any]) -> CustomerStatements:
    """One customer's statement settings; unknown keys, methods and digit counts refused."""
    known = {f.name for f in fields(CustomerStatements)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: statements.customers.{customer} has unknown keys {unknown}")
    settings = CustomerStatements(**raw)
    digits = settings.mask_digits
    if isinstance(digits, bool) or not isinstance(digits, int) or not 0 <= digits <= 15:
        raise ConfigError(f"{path}: statements.customers.{customer}.mask_digits must be 0 to 15")
    if settings.deliver not in DELIVERY_METHODS:
        raise ConfigError(
            f"{path}: statements.customers.{customer}.deliver must be one of {DELIVERY_METHODS}"
        )
    return settings


def _statements(path: Path, raw: dict[str, Any]) -> StatementSettings:
    """The statements section; a customer delivering links needs the portal's URL."""
    known = {f.name for f in fields(StatementSettings)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: statements has unknown keys {unknown}; known: {sorted(known)}")
    customers = {
        str(customer): _customer_statements(path, str(customer), spec or {})
        for customer, spec in (raw.get("customers") or {}).items()
    }
    settings = StatementSettings(**{**raw, "customers": customers})
    if settings.portal_url is None and any(c.deliver == "link" for c in customers.values()):
        raise ConfigError(f"{path}: statements.portal_url is needed to deliver links")
    if settings.max_attempts < 1 or settings.retry_minutes <= 0:
        raise ConfigError(f"{path}: statements.max_attempts and retry_minutes must be positive")
    return settings
