"""Aggregate attributed calls: per user, then into billing lines; and the revenue share."""

from __future__ import annotations

import pandas as pd

from cdr_billing.money import divide_half_up

LINE_KEYS = ["customer_id", "sequence_number", "currency"]
USER_KEYS = [*LINE_KEYS, "user_id"]
SHARE_KEYS = ["service_provider", "currency", "share_basis_points"]
TOTALS = ["total_minor", "call_count", "billed_seconds"]


def aggregate_users(attributed: pd.DataFrame) -> pd.DataFrame:
    """One line per (customer id, sequence number, currency, user): total, calls, seconds."""
    users = (
        attributed.groupby(USER_KEYS, sort=True)
        .agg(total_minor=("cost_minor", "sum"), call_count=("cost_minor", "size"), billed_seconds=("billed_seconds", "sum"))
        .reset_index()
    )
    return users.astype(dict.fromkeys(TOTALS, "int64"))


def merge_user_lines(user_lines: pd.DataFrame) -> pd.DataFrame:
    """User lines of several files summed per user."""
    return user_lines.groupby(USER_KEYS, sort=True)[TOTALS].sum().reset_index().astype(dict.fromkeys(TOTALS, "int64"))


def aggregate_lines(user_lines: pd.DataFrame) -> pd.DataFrame:
    """One billing line per (customer id, sequence number, currency): the sum of its users' lines."""
    return user_lines.groupby(LINE_KEYS, sort=True)[TOTALS].sum().reset_index().astype(dict.fromkeys(TOTALS, "int64"))


def call_totals(attributed: pd.DataFrame) -> pd.DataFrame:
    """The billed calls' cost per currency, to prove the lines against."""
    return attributed.groupby("currency", sort=True)["cost_minor"].sum().rename("total_minor").reset_index()


def revenue_share_sums(attributed: pd.DataFrame) -> pd.DataFrame:
    """Per (service provider, currency, share percentage) of the billed calls that carry one:
    calls and billed amount (not yet rounded to a share, so files can be summed first)."""
    carrying = attributed[attributed["revenue_share_bp"].notna()]
    return (
        carrying.assign(share_basis_points=carrying["revenue_share_bp"].astype("int64"))
        .groupby(SHARE_KEYS, sort=True)
        .agg(call_count=("cost_minor", "size"), billed_minor=("cost_minor", "sum"))
        .reset_index()
        .astype({"call_count": "int64", "billed_minor": "int64"})
    )


def revenue_share(sums: pd.DataFrame) -> pd.DataFrame:
    """The provider's share per (provider, currency, percentage): billed x percentage, summed
    exactly over all files and rounded half up once."""
    grouped = sums.groupby(SHARE_KEYS, sort=True)[["call_count", "billed_minor"]].sum().reset_index()
    share = divide_half_up(grouped["billed_minor"].to_numpy() * grouped["share_basis_points"].to_numpy(), 10_000)
    return grouped.assign(share_minor=share).astype({"call_count": "int64", "billed_minor": "int64", "share_minor": "int64"})
