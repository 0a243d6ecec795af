"""Dataset snapshots: one campaign's raw data as Parquet files plus a JSON card, zipped.

An export job (``start_export_job``, kind EXPORT, default queue) writes under
``exports/<job id>/`` in the media storage:

1. One Parquet file per table — ``judgments``, ``items``, ``faces``, ``generations``,
   ``metric_versions``, ``scores`` — rows sorted by primary key, an explicit schema, fixed row
   group size and compression, no pandas or timestamp metadata: the same data gives
   byte-identical files.
2. ``card.json``: the campaign, every table's file, row count and each column's type and meaning,
   and how to load it (``datasets.load_dataset("parquet", data_files={...})`` or pyarrow).
3. ``snapshot.zip`` holding all of the above with fixed member dates, the download.

Annotators appear only by their per-campaign pseudonym. Scores are every stored metric version's
value for the campaign's faces (face level) and their generations (image level).
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.db.models import Q

from annotator.models import Campaign, Face, Generation, Item, Judgment, Membership
from benchmark.models import MetricVersion, Score
from jobs import progress as job_progress
from jobs.models import Job

ROW_GROUP_SIZE = 100_000
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say: no build time in the archive


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    value: Callable[[Any], Any]


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, ensure_ascii=False)


def _tables(campaign: Campaign) -> dict[str, tuple[str, list[Column], list[Any]]]:
    """Per table: its description, its columns and its rows (ORM objects or dicts), sorted by id."""
    pseudonyms = dict(
        Membership.objects.filter(campaign=campaign).values_list("annotator_id", "pseudonym")
    )
    items = list(Item.objects.filter(campaign=campaign).order_by("id"))
    face_filter = (
        Q(pk__in=Item.objects.filter(campaign=campaign).values("face_id"))
        | Q(pk__in=Item.objects.filter(campaign=campaign).values("left_face_id"))
        | Q(pk__in=Item.objects.filter(campaign=campaign).values("right_face_id"))
    )
    faces = list(Face.objects.filter(face_filter).order_by("id"))
    generations = list(
        Generation.objects.filter(faces__in=Face.objects.filter(face_filter))
        .distinct()
        .order_by("id")
    )
    scores = list(
        Score.objects.filter(
            Q(face_id__in=Face.objects.filter(face_filter).values("pk"))
            | Q(
                generation_id__in=Generation.objects.filter(
                    faces__in=Face.objects.filter(face_filter)
                ).values("pk")
            )
        )
        .select_related("metric_version")
        .order_by("metric_version_id", "id")
    )
    versions = list(
        MetricVersion.objects.filter(pk__in={s.metric_version_id for s in scores}).order_by("id")
    )
    judgments = list(
        Judgment.objects.filter(item__campaign=campaign).select_related("item").order_by("id")
    )
    i64, f64, text, flag = pa.int64(), pa.float64(), pa.string(), pa.bool_()
    return {
        "judgments": (
            "One row per stored judgment, gold items and broken flags included (filter on is_gold / flag).",
            [
                Column("judgment_id", i64, "Primary key of the judgment.", lambda j: j.pk),
                Column("item_id", i64, "The item judged (see items).", lambda j: j.item_id),
                Column(
                    "annotator",
                    text,
                    "The annotator's pseudonym in this campaign (never a username).",
                    lambda j: pseudonyms.get(j.annotator_id, ""),
                ),
                Column(
                    "rating",
                    pa.int8(),
                    "Likert rating 1–5; null for pairwise judgments and flags.",
                    lambda j: j.rating,
                ),
                Column(
                    "choice",
                    text,
                    "Pairwise answer relative to the faces as shown: left, right, tie, both_bad; empty otherwise.",
                    lambda j: j.choice,
                ),
                Column(
                    "flag",
                    text,
                    "'broken' when the annotator flagged the image or face instead of answering; empty otherwise.",
                    lambda j: j.flag,
                ),
                Column(
                    "shown_left_face_id",
                    i64,
                    "Pairwise: the face shown on the left (the display order); null for likert.",
                    lambda j: j.shown_left_face_id,
                ),
                Column(
                    "display_index",
                    i64,
                    "Position of the item in this annotator's sequence (1 = first served).",
                    lambda j: j.display_index,
                ),
                Column(
                    "time_on_screen_ms",
                    i64,
                    "Milliseconds the item was on screen before the answer.",
                    lambda j: j.time_on_screen_ms,
                ),
                Column(
                    "is_gold",
                    flag,
                    "True for gold (check) items with a planted answer; not alignment data.",
                    lambda j: j.item.is_gold,
                ),
                Column(
                    "gold_correct",
                    flag,
                    "For gold items: whether the answer matched the expected one (within the campaign's tolerance).",
                    lambda j: j.gold_correct,
                ),
                Column(
                    "created_at",
                    pa.timestamp("us", tz="UTC"),
                    "When the judgment was stored (UTC).",
                    lambda j: j.created_at,
                ),
            ],
            judgments,
        ),
        "items": (
            "What one screen showed: one face (likert) or two faces in a stored left/right order (pairwise).",
            [
                Column("item_id", i64, "Primary key of the item.", lambda i: i.pk),
                Column(
                    "face_id",
                    i64,
                    "Likert: the face rated; null for pairwise.",
                    lambda i: i.face_id,
                ),
                Column(
                    "left_face_id",
                    i64,
                    "Pairwise: the face on the left; null for likert.",
                    lambda i: i.left_face_id,
                ),
                Column(
                    "right_face_id",
                    i64,
                    "Pairwise: the face on the right; null for likert.",
                    lambda i: i.right_face_id,
                ),
                Column("is_gold", flag, "True for gold (check) items.", lambda i: i.is_gold),
                Column(
                    "gold_answer",
                    text,
                    "Gold items: the expected rating or choice; empty otherwise.",
                    lambda i: i.gold_answer,
                ),
                Column(
                    "judgments_wanted",
                    i64,
                    "k, the judgments wanted for this item; null for gold items.",
                    lambda i: i.judgments_wanted,
                ),
                Column(
                    "judgment_count",
                    i64,
                    "Judgments stored for this item.",
                    lambda i: i.judgment_count,
                ),
            ],
            items,
        ),
        "faces": (
            "Every face an item shows, with its detection.",
            [
                Column("face_id", i64, "Primary key of the face.", lambda f: f.pk),
                Column(
                    "generation_id",
                    i64,
                    "The image the face is in (see generations).",
                    lambda f: f.generation_id,
                ),
                Column(
                    "x0", f64, "Box left, pixels of the stored image (inclusive).", lambda f: f.x0
                ),
                Column("y0", f64, "Box top, pixels (inclusive).", lambda f: f.y0),
                Column("x1", f64, "Box right, pixels (exclusive).", lambda f: f.x1),
                Column("y1", f64, "Box bottom, pixels (exclusive).", lambda f: f.y1),
                Column(
                    "size_px", f64, "min(width, height) of the box in pixels.", lambda f: f.size_px
                ),
                Column(
                    "landmarks",
                    text,
                    "JSON list of 5 (x, y) landmarks when the detector gives them, else null.",
                    lambda f: _json(f.landmarks),
                ),
                Column("detector", text, "Face detector name.", lambda f: f.detector),
                Column("confidence", f64, "Detector confidence.", lambda f: f.confidence),
            ],
            faces,
        ),
        "generations": (
            "The images (generations) the faces come from.",
            [
                Column("generation_id", i64, "Primary key of the generation.", lambda g: g.pk),
                Column(
                    "dataset_id", i64, "The dataset it was imported into.", lambda g: g.dataset_id
                ),
                Column("sha256", text, "sha256 of the image bytes.", lambda g: g.sha256),
                Column(
                    "image_path",
                    text,
                    "Path of the image in FaceBench's media storage.",
                    lambda g: g.image.name,
                ),
                Column("width", i64, "Image width in pixels.", lambda g: g.width),
                Column("height", i64, "Image height in pixels.", lambda g: g.height),
                Column(
                    "prompt", text, "Text prompt the image was generated from.", lambda g: g.prompt
                ),
                Column("model_name", text, "Diffusion model (DM) name.", lambda g: g.model_name),
                Column("model_version", text, "DM version.", lambda g: g.model_version),
                Column(
                    "dm_label",
                    text,
                    "model_name and model_version, the DM label reports use.",
                    lambda g: g.dm_label,
                ),
                Column("seed", i64, "Sampling seed, when known.", lambda g: g.seed),
                Column(
                    "sampler", text, "JSON of the sampler settings.", lambda g: _json(g.sampler)
                ),
                Column("source", text, "imported, generated or demo.", lambda g: g.source),
            ],
            generations,
        ),
        "metric_versions": (
            "The metric versions that have scores in this snapshot.",
            [
                Column(
                    "metric_version_id", i64, "Primary key of the metric version.", lambda v: v.pk
                ),
                Column(
                    "metric",
                    text,
                    "Registry name of the metric (e.g. face_score, imagereward).",
                    lambda v: v.metric,
                ),
                Column("label", text, "Human-readable version label.", lambda v: v.label),
                Column(
                    "level",
                    text,
                    "face: one score per face; image: one score per generation.",
                    lambda v: v.level,
                ),
                Column(
                    "higher_is_better",
                    flag,
                    "Whether a higher score means a better face/image.",
                    lambda v: v.higher_is_better,
                ),
                Column(
                    "weights_sha256",
                    text,
                    "sha256 of the weights file(s).",
                    lambda v: v.weights_sha256,
                ),
                Column(
                    "code_version",
                    text,
                    "Version of FaceBench's metric code.",
                    lambda v: v.code_version,
                ),
                Column(
                    "settings", text, "JSON of the metric settings.", lambda v: _json(v.settings)
                ),
            ],
            versions,
        ),
        "scores": (
            "Every stored score of the snapshot's faces (face-level metrics) and generations (image-level metrics).",
            [
                Column("score_id", i64, "Primary key of the score.", lambda s: s.pk),
                Column(
                    "metric_version_id",
                    i64,
                    "The metric version (see metric_versions).",
                    lambda s: s.metric_version_id,
                ),
                Column(
                    "metric",
                    text,
                    "Registry name of the metric.",
                    lambda s: s.metric_version.metric,
                ),
                Column(
                    "face_id",
                    i64,
                    "Face-level score: the face; null for image-level scores.",
                    lambda s: s.face_id,
                ),
                Column(
                    "generation_id",
                    i64,
                    "Image-level score: the generation; null for face-level scores.",
                    lambda s: s.generation_id,
                ),
                Column(
                    "value",
                    f64,
                    "The score; null when the input could not be scored.",
                    lambda s: s.value,
                ),
                Column(
                    "error",
                    text,
                    "Why there is no value (empty when there is one).",
                    lambda s: s.error,
                ),
            ],
            scores,
        ),
    }


def parquet_bytes(columns: Sequence[Column], rows: Sequence[Any]) -> tuple[bytes, pa.Schema]:
    schema = pa.schema(
        [pa.field(c.name, c.type, metadata={"description": c.description}) for c in columns]
    )
    table = pa.table(
        {c.name: pa.array([c.value(r) for r in rows], type=c.type) for c in columns}, schema=schema
    )
    buffer = io.BytesIO()
    pq.write_table(
        table,
        buffer,
        row_group_size=ROW_GROUP_SIZE,
        compression="zstd",
        compression_level=3,
        use_dictionary=True,
        write_statistics=True,
    )
    return buffer.getvalue(), schema


def _save(name: str, data: bytes) -> str:
    # A redelivered job writes the same names again: replace, don't let storage add a suffix.
    if default_storage.exists(name):
        default_storage.delete(name)
    return default_storage.save(name, ContentFile(data))


def build_snapshot(campaign: Campaign, folder: str, *, job_id: int | None = None) -> dict[str, Any]:
    """Write the snapshot under ``folder``; return the card plus the zip's path and sha256."""
    tables = _tables(campaign)
    card: dict[str, Any] = {
        "name": f"facebench-campaign-{campaign.pk}",
        "description": "A FaceBench campaign snapshot: human judgments of faces in images made by diffusion models, "
        "the faces and images, and every stored metric score.",
        "campaign": {
            "id": campaign.pk,
            "name": campaign.name,
            "protocol": campaign.protocol,
            "instructions": campaign.instructions,
            "overlap_k": campaign.overlap_k,
            "gold_share": campaign.gold_share,
            "gold_tolerance": campaign.gold_tolerance,
            "blind": campaign.blind,
            "status": campaign.status,
        },
        "tables": {},
        "how_to_load": {
            "datasets": 'datasets.load_dataset("parquet", data_files={"judgments": "judgments.parquet", ...})',
            "pyarrow": 'pyarrow.parquet.read_table("judgments.parquet")',
        },
    }
    files: dict[str, bytes] = {}
    for n, (table, (description, columns, rows)) in enumerate(tables.items(), start=1):
        data, schema = parquet_bytes(columns, rows)
        files[f"{table}.parquet"] = data
        card["tables"][table] = {
            "file": f"{table}.parquet",
            "description": description,
            "rows": len(rows),
            "sha256": hashlib.sha256(data).hexdigest(),
            "columns": [
                {"name": c.name, "type": str(c.type), "description": c.description} for c in columns
            ],
        }
        if job_id is not None:
            job_progress.advance(job_id, n)
            job_progress.log(job_id, f"{table}: {len(rows)} rows")
    files["card.json"] = (
        json.dumps(card, indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    ).encode()
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    for name, data in files.items():
        _save(f"{folder}/{name}", data)
    zip_bytes = archive.getvalue()
    zip_path = _save(f"{folder}/snapshot.zip", zip_bytes)
    return {
        "zip": zip_path,
        "zip_sha256": hashlib.sha256(zip_bytes).hexdigest(),
        "files": sorted(f"{folder}/{name}" for name in files),
        "rows": {t: card["tables"][t]["rows"] for t in card["tables"]},
    }


def start_export_job(campaign: Campaign, *, created_by: Any = None) -> Job:
    """Create an export job for the campaign and queue it on commit."""
    from benchmark.tasks import export_snapshot_task

    with transaction.atomic():
        job = Job.objects.create(
            kind=Job.Kind.EXPORT,
            config={"campaign_id": campaign.pk},
            created_by=created_by,
            progress_total=6,
        )
        export_snapshot_task.delay_on_commit(job.pk)
    return job


def run_export_job(job_id: int) -> dict[str, Any]:
    job = Job.objects.get(pk=job_id)
    campaign = Campaign.objects.get(pk=job.config["campaign_id"])
    return {
        "campaign_id": campaign.pk,
        **build_snapshot(campaign, f"exports/{job_id}", job_id=job_id),
    }
