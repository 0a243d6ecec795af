"""Raw judgment exports (CSV and JSONL), streamed row by row.

Annotators appear only by their per-campaign pseudonym. CSV cells that a spreadsheet would run as
a formula (starting with = + - @, tab or carriage return) are prefixed with a quote.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from typing import Any

from django.http import StreamingHttpResponse

from annotator.models import Campaign, Judgment, Membership

COLUMNS = [
    "judgment_id",
    "campaign_id",
    "protocol",
    "item_id",
    "is_gold",
    "gold_answer",
    "gold_correct",
    "annotator",
    "display_index",
    "time_on_screen_ms",
    "rating",
    "choice",
    "flag",
    "face_id",
    "left_face_id",
    "right_face_id",
    "left_generation_id",
    "right_generation_id",
    "prompt",
    "left_model",
    "right_model",
    "created_at",
]
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def judgment_rows(campaign: Campaign) -> Iterator[dict[str, Any]]:
    pseudonyms = dict(Membership.objects.filter(campaign=campaign).values_list("annotator_id", "pseudonym"))
    judgments = (
        Judgment.objects.filter(item__campaign=campaign)
        .select_related(
            "item__face__generation", "item__left_face__generation", "item__right_face__generation"
        )
        .order_by("id")
    )
    for j in judgments.iterator(chunk_size=2000):
        item = j.item
        left = item.face or item.left_face
        right = item.right_face
        yield {
            "judgment_id": j.pk,
            "campaign_id": campaign.pk,
            "protocol": campaign.protocol,
            "item_id": item.pk,
            "is_gold": item.is_gold,
            "gold_answer": item.gold_answer,
            "gold_correct": j.gold_correct,
            "annotator": pseudonyms.get(j.annotator_id, ""),
            "display_index": j.display_index,
            "time_on_screen_ms": j.time_on_screen_ms,
            "rating": j.rating,
            "choice": j.choice,
            "flag": j.flag,
            "face_id": item.face_id,
            "left_face_id": item.left_face_id,
            "right_face_id": item.right_face_id,
            "left_generation_id": left.generation_id if left else None,
            "right_generation_id": right.generation_id if right else None,
            "prompt": left.generation.prompt if left else "",
            "left_model": left.generation.dm_label if left else "",
            "right_model": right.generation.dm_label if right else "",
            "created_at": j.created_at.isoformat(),
        }


def csv_safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def csv_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_safe("" if v is None else v) for k, v in row.items()})
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def jsonl_lines(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, ensure_ascii=False) + "\n"


FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}


def judgment_export_response(campaign: Campaign, fmt: str) -> StreamingHttpResponse:
    """A streamed download of the campaign's judgments; ``fmt`` must be a key of ``FORMATS``."""
    lines = csv_lines(judgment_rows(campaign)) if fmt == "csv" else jsonl_lines(judgment_rows(campaign))
    response = StreamingHttpResponse(lines, content_type=FORMATS[fmt])
    response["Content-Disposition"] = f'attachment; filename="campaign-{campaign.pk}-judgments.{fmt}"'
    return response
