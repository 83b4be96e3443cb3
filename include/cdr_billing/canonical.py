"""The canonical CDR schema every provider's file is mapped onto.

Backbone: the carrier CDR fields; plus the provider's pre-computed cost and currency
where a provider prices calls, and the lineage columns source_file and source_row.
"""

from __future__ import annotations

CARRIER_FIELDS = (
    "transaction_id",
    "session_id",
    "service_name",
    "user_id",
    "start_of_usage",
    "connect_time",
    "end_of_usage",
    "duration_of_usage",
    "amount_of_usage",
    "originating_party",
    "destination_party",
    "transaction_part_number",
    "completion_status",
    "additional_info",
    "service_provider",
    "revenue_share_percentage",
    "party_to_charge",
    "charging_info",
)
PROVIDER_FIELDS = ("provider_cost", "currency")
LINEAGE_FIELDS = ("source_file", "source_row")
# The reader's column: False where a CSV row's fields are not the header's.
FIELDS_MATCH_HEADER = "fields_match_header"
TEXT_FIELDS = CARRIER_FIELDS + PROVIDER_FIELDS
# The text fields the stages after validation use; a billed call's other fields stay in its
# archived source file, found by source_file and source_row.
CARRIED_FIELDS = (
    "transaction_id",
    "session_id",
    "user_id",
    "destination_party",
    "transaction_part_number",
    "service_provider",
    "currency",
)

# Fields a profile must map (or default) for a row to be billable at all.
REQUIRED_FIELDS = (
    "transaction_id",
    "user_id",
    "start_of_usage",
    "duration_of_usage",
    "completion_status",
)
REQUIRED_PRICED = ("provider_cost", "currency")
REQUIRED_UNPRICED = ("destination_party",)

COMPLETION_FAILED, COMPLETION_OK, COMPLETION_PARTIAL, COMPLETION_DELIVERY_FAILED = 0, 1, 2, 3
COMPLETION_STATUSES = (0, 1, 2, 3)


def required_fields(priced: bool) -> tuple[str, ...]:
    """Return the canonical fields a priced or unpriced source must provide."""
    return REQUIRED_FIELDS + (REQUIRED_PRICED if priced else REQUIRED_UNPRICED)
