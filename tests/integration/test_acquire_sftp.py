"""Fetching over real SFTP servers on loopback, with failover and pinned host keys."""

import hashlib
import os

import pytest

from cdr_billing.acquire import AllServersFailedError, FileRequest, fetch_with_failover
from cdr_devkit.services import connection_env, free_port

REQUESTS = [FileRequest("cdr", "carrier", "/cdr/carrier", "carrier_cdr_202610*.csv")]


@pytest.fixture
def connections(services, monkeypatch):
    """Set the two SFTP connections for one test."""

    def set_connections(primary: dict, secondary: dict) -> None:
        for key, value in connection_env(
            {"cdr_sftp_primary": primary, "cdr_sftp_secondary": secondary}
        ).items():
            monkeypatch.setenv(key, value)

    return set_connections


def fetch(tmp_path):
    return fetch_with_failover(
        ["cdr_sftp_primary", "cdr_sftp_secondary"], REQUESTS, tmp_path, timeout_seconds=5
    )


def test_primary_serves_when_healthy(services, connections, tmp_path, sftp_root):
    connections(
        services.sftp_connection(services.primary), services.sftp_connection(services.secondary)
    )
    result = fetch(tmp_path)
    assert [(f.name, f.server) for f in result.files] == [
        ("carrier_cdr_202610.csv", "cdr_sftp_primary")
    ]
    original = (sftp_root / "cdr/carrier/carrier_cdr_202610.csv").read_bytes()
    assert result.files[0].sha256 == hashlib.sha256(original).hexdigest()
    assert (tmp_path / "carrier_cdr_202610.csv").read_bytes() == original
    # the other months' carrier files (September, December to March)
    assert result.failovers == [] and result.ignored == 5


def test_primary_down_fails_over_to_secondary(services, connections, tmp_path):
    connections(
        services.sftp_connection(services.primary, port=free_port()),
        services.sftp_connection(services.secondary),
    )
    result = fetch(tmp_path)
    assert result.files[0].server == "cdr_sftp_secondary"
    assert result.failovers == [{"server": "cdr_sftp_primary", "error": "connection refused"}]


def test_changed_host_key_is_never_trusted(services, connections, tmp_path):
    wrong_key = services.sftp_connection(services.primary)
    wrong_key["extra"] = {**wrong_key["extra"], "host_key": services.secondary.host_key}
    connections(wrong_key, services.sftp_connection(services.secondary))
    result = fetch(tmp_path)
    assert result.files[0].server == "cdr_sftp_secondary"
    assert "man-in-the-middle" in result.failovers[0]["error"]


def test_unpinned_unknown_host_key_is_refused(services, connections, tmp_path):
    unpinned = services.sftp_connection(services.primary)
    unpinned["extra"] = {k: v for k, v in unpinned["extra"].items() if k != "host_key"}
    connections(unpinned, services.sftp_connection(services.secondary))
    result = fetch(tmp_path)
    assert result.files[0].server == "cdr_sftp_secondary"
    assert "unknown" in result.failovers[0]["error"]


def test_all_servers_down_is_a_clear_failure(services, connections, tmp_path):
    connections(
        services.sftp_connection(services.primary, port=free_port()),
        services.sftp_connection(services.secondary, port=free_port()),
    )
    with pytest.raises(
        AllServersFailedError,
        match="cdr_sftp_primary: connection refused; cdr_sftp_secondary: connection refused",
    ):
        fetch(tmp_path)
    assert not any(name.endswith(".part") for name in os.listdir(tmp_path))
