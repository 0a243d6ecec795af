"""Build an alignment report inline and print its headline table in the terminal.

Steps: gather the campaigns' regular judgments and the metric versions' scores, run the
statistics engine with the given settings (``benchmark.reports.build_results``), print one line
per statistic with each metric's point [low, high] (``*`` marks the best metric of the line) and
the human ceiling. ``--save`` also stores it as a frozen ``Report``; ``--json`` writes every number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from benchmark.models import Report
from benchmark.reports import (
    AGGREGATIONS,
    COLUMN_LABELS,
    DEFAULT_SETTINGS,
    ReportRefused,
    build_results,
    ci_text,
    normalise_settings,
)


def _ids(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CommandError(f"--{what} takes comma-separated ids, e.g. 1,2") from None


def headline_lines(results: dict[str, Any]) -> list[str]:
    """The headline table as text: statistics down, metrics across (metrics are few, statistics many)."""
    headline = results["headline"]
    metrics = [row["metric"] for row in headline["rows"]]
    values = {row["metric"]: row["values"] for row in headline["rows"]}
    ceiling = headline.get("human_ceiling", {})
    header = ["statistic", *metrics, *(["human ceiling"] if ceiling else [])]
    table = [header]
    for column in headline["columns"]:
        line = [COLUMN_LABELS.get(column, column)]
        for m in metrics:
            mark = " *" if headline["best"].get(column) == m else "  "
            line.append(ci_text(values[m].get(column)) + mark)
        if ceiling:
            line.append(ci_text(ceiling.get(column)) if column in ceiling else "")
        table.append(line)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


class Command(BaseCommand):
    help = "Build an alignment report of metric versions against campaigns' judgments and print its headline table."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--campaigns", required=True, help="comma-separated campaign ids, e.g. 1,2"
        )
        parser.add_argument(
            "--metric-versions", required=True, help="comma-separated metric version ids, e.g. 3,4"
        )
        parser.add_argument("--n-boot", type=int, default=DEFAULT_SETTINGS["n_boot"])
        parser.add_argument("--seed", type=int, default=DEFAULT_SETTINGS["seed"])
        parser.add_argument("--level", type=float, default=DEFAULT_SETTINGS["level"])
        parser.add_argument(
            "--image-aggregation",
            choices=AGGREGATIONS,
            default=DEFAULT_SETTINGS["image_aggregation"],
        )
        parser.add_argument("--title", default="Report from the command line")
        parser.add_argument(
            "--save", action="store_true", help="store it as a Report (shown on the Reports page)"
        )
        parser.add_argument("--json", type=Path, help="write every number to this JSON file")

    def handle(self, *args: Any, **options: Any) -> None:
        campaigns = _ids(options["campaigns"], "campaigns")
        versions = _ids(options["metric_versions"], "metric-versions")
        try:
            settings = normalise_settings(
                {
                    "n_boot": options["n_boot"],
                    "seed": options["seed"],
                    "level": options["level"],
                    "image_aggregation": options["image_aggregation"],
                }
            )
            results = build_results(
                campaigns=campaigns, metric_versions=versions, settings=settings
            )
        except ReportRefused as error:
            raise CommandError(error.message) from None
        data = results["data"]
        self.stdout.write(
            f"{data['n_faces']} faces, {data['n_images']} images, {data['n_prompts']} prompts, {data['n_dms']} DMs, "
            f"{data['n_annotators']} annotators; {settings['n_boot']} resamples, seed {settings['seed']}, "
            f"{settings['level']:.0%} intervals (* best per line)"
        )
        for line in headline_lines(results):
            self.stdout.write(line)
        if options["json"]:
            options["json"].write_text(
                json.dumps({"settings": settings, "results": results}, indent=1)
            )
            self.stdout.write(f"Every number written to {options['json']}")
        if options["save"]:
            report = Report.objects.create(
                title=options["title"], settings=settings, results=results
            )
            report.campaigns.set(campaigns)
            report.metric_versions.set(versions)
            self.stdout.write(f"Saved as report #{report.pk}")
