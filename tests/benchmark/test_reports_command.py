"""``manage.py report``: inline build, headline table in the terminal."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import CommandError, call_command

from benchmark.models import Report
from benchmark.reports import metric_name
from tests.benchmark.synthetic_campaign import make_synthetic_campaign

pytestmark = pytest.mark.django_db


def test_report_command_prints_the_headline_table(tmp_path):
    world = make_synthetic_campaign(n_prompts=15)
    out = io.StringIO()
    versions = f"{world.tracks.pk},{world.unrelated.pk}"
    call_command(
        "report",
        "--campaigns",
        str(world.campaign.pk),
        "--metric-versions",
        versions,
        "--n-boot",
        "60",
        "--json",
        str(tmp_path / "r.json"),
        "--save",
        stdout=out,
    )
    text = out.getvalue()
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("statistic"))
    assert metric_name(world.tracks) in header and "human ceiling" in header
    spearman = next(line for line in lines if line.startswith("Spearman ρ (face)"))
    assert spearman.count("[") == 3 and " *" in spearman
    # The tracking metric is the best of the line: its cell carries the star.
    assert spearman.index(" *") < spearman.index("[", spearman.index("]") + 1)
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["settings"]["n_boot"] == 60
    report = Report.objects.get()
    assert report.results["headline"] == saved["results"]["headline"]
    assert set(report.metric_versions.values_list("id", flat=True)) == {
        world.tracks.pk,
        world.unrelated.pk,
    }


def test_report_command_refuses_unknown_ids(db):
    with pytest.raises(CommandError):
        call_command("report", "--campaigns", "1", "--metric-versions", "x")
    with pytest.raises(CommandError, match="metric versions"):
        call_command("report", "--campaigns", "999", "--metric-versions", "999")
