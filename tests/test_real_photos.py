"""The 100 real Open Images photos through the real CLI with the tiny model."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_openimages_ingest(cli, real_photos):
    result = cli("ingest", real_photos, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    n = len([p for p in real_photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg")])
    assert summary["new"] + summary["failed"] == n and summary["new"] >= n - 1
    again = json.loads(cli("ingest", real_photos, "--json").stdout)
    assert again["unchanged"] == n and again["embedded"] == 0
    st = json.loads(cli("status", "--json").stdout)
    assert st["index"]["count"] == summary["new"] and st["index"]["in_sync"]
