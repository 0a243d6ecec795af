"""Benchmark reports: how well chosen metric versions agree with the humans of chosen campaigns.

Building a report (``build_results``, run by a report job or inline by ``manage.py report``):

1. Gather the judgments of the campaigns. Alignment data is the regular items only: gold items
   (check questions with a planted answer) and judgments flagged "broken" are left out and
   counted. Likert ratings become (face, annotator, rating) rows; pairwise choices become
   (left face, right face, annotator, outcome) rows in the order the annotator saw them.
2. Code the faces for the statistics engine: prompts (the bootstrap clusters) by prompt text,
   images by generation, DMs by ``Generation.dm_label``, annotators by user (one person is one
   annotator across the chosen campaigns; reports name them by campaign pseudonym only).
3. Look up every metric version's scores. A face-level score maps to its face. An image-level
   score (ImageReward, HPS, aesthetic) is the generation's value and is repeated on each of the
   generation's faces: it cannot tell two faces of one image apart, which is exactly what the
   face-level statistics then show. Lower-is-better metrics are negated before the statistics,
   so a positive correlation always means "agrees with the humans"; raw values stay in the
   per-face table and the plots.
4. ``image_aggregation`` (mean / min / largest): the engine's image-level columns average a
   face-level metric over the faces; with ``min`` or ``largest`` every face-level metric also
   gets a variant column ("… [min face]") whose value is that aggregate over all scored faces of
   the generation, repeated on each face like an image-level metric, so its image-level columns
   use that aggregation.
5. Call ``benchmark.stats.alignment_report`` with the stored settings (n_boot, seed, level), then
   the same engine on subsets for the breakdowns (per DM, per face-size tertile), and add the
   per-face table (human mean and every metric) the scatter plots are drawn from.

Everything is seeded and ordered by primary keys, so the same settings on the same data give the
same numbers (``rebuild_report`` relies on it; only ``timings_s`` differ).
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import transaction
from django.db.models import Q

from annotator.models import Campaign, Face, Generation, Item, Judgment, Membership
from benchmark import stats
from benchmark.models import MetricVersion, Report, Score
from jobs import progress as job_progress
from jobs.models import Job

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1
AGGREGATIONS = ("mean", "min", "largest")
DEFAULT_SETTINGS: dict[str, Any] = {
    "n_boot": 1000,
    "seed": 0,
    "level": 0.95,
    "image_aggregation": "mean",
    "resample_annotators": True,
    # Breakdowns run the engine once per subset; fewer resamples keep a report's cost bounded.
    "breakdown_n_boot": 200,
}
OUTCOME: dict[str, stats.PairOutcome] = {
    Judgment.Choice.LEFT: stats.PairOutcome.LEFT,
    Judgment.Choice.RIGHT: stats.PairOutcome.RIGHT,
    Judgment.Choice.TIE: stats.PairOutcome.TIE,
    Judgment.Choice.BOTH_BAD: stats.PairOutcome.BOTH_BAD,
}
SIZE_BINS = ("small", "medium", "large")


class ReportRefused(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def normalise_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in and values checked, so a stored report always names every setting."""
    out = dict(DEFAULT_SETTINGS)
    unknown = set(given or {}) - set(DEFAULT_SETTINGS)
    if unknown:
        raise ReportRefused(f"Unknown report settings: {', '.join(sorted(unknown))}.")
    out.update(given or {})
    try:
        out["n_boot"] = int(out["n_boot"])
        out["breakdown_n_boot"] = int(out["breakdown_n_boot"])
        out["seed"] = int(out["seed"])
        out["level"] = float(out["level"])
    except (TypeError, ValueError) as exc:
        raise ReportRefused(f"Bad report setting: {exc}.") from exc
    if not 10 <= out["n_boot"] <= 100_000 or not 10 <= out["breakdown_n_boot"] <= 100_000:
        raise ReportRefused("n_boot must be between 10 and 100000.")
    if not 0.5 <= out["level"] < 1:
        raise ReportRefused("level must be in [0.5, 1).")
    if out["image_aggregation"] not in AGGREGATIONS:
        raise ReportRefused(f"image_aggregation must be one of {', '.join(AGGREGATIONS)}.")
    out["resample_annotators"] = bool(out["resample_annotators"])
    return out


# --- gathering the inputs ------------------------------------------------------------------


@dataclass
class ReportInputs:
    """The arrays the statistics engine reads, plus the labels to turn codes back into names."""

    face_ids: np.ndarray  # (F,) Face pks in code order
    generation_ids: np.ndarray  # (F,)
    size_px: np.ndarray  # (F,)
    faces: stats.Faces
    dm_labels: list[str]
    prompts: list[str]
    annotators: list[str]  # pseudonyms in code order
    likert: stats.LikertJudgments | None
    pairwise: stats.PairwiseJudgments | None
    metrics: dict[str, np.ndarray]  # oriented (higher = better) per-face values, NaN = no score
    raw_metrics: dict[str, np.ndarray]  # as stored
    metric_info: list[dict[str, Any]]
    counts: dict[str, int] = field(default_factory=dict)


def metric_name(version: MetricVersion) -> str:
    """A short unique column name for a metric version."""
    return f"{version.label or version.metric} #{version.pk}"


def _campaign_ids(campaigns: Iterable[Campaign | int]) -> list[int]:
    return sorted({c if isinstance(c, int) else c.pk for c in campaigns})


def _version_list(metric_versions: Iterable[MetricVersion | int]) -> list[MetricVersion]:
    ids = sorted({v if isinstance(v, int) else v.pk for v in metric_versions})
    versions = list(MetricVersion.objects.filter(pk__in=ids).order_by("id"))
    if len(versions) != len(ids):
        raise ReportRefused("Some metric versions do not exist.")
    return versions


def gather_inputs(
    *,
    campaigns: Iterable[Campaign | int],
    metric_versions: Iterable[MetricVersion | int],
    settings: Mapping[str, Any],
) -> ReportInputs:
    campaign_ids = _campaign_ids(campaigns)
    versions = _version_list(metric_versions)
    if not campaign_ids:
        raise ReportRefused("Choose at least one campaign.")
    if not versions:
        raise ReportRefused("Choose at least one metric version.")
    rows = list(
        Judgment.objects.filter(item__campaign_id__in=campaign_ids)
        .order_by("id")
        .values_list(
            "annotator_id",
            "item__is_gold",
            "item__face_id",
            "item__left_face_id",
            "item__right_face_id",
            "shown_left_face_id",
            "rating",
            "choice",
            "flag",
        )
    )
    counts = {"judgments": len(rows), "gold_left_out": 0, "flagged_left_out": 0}
    kept = []
    for row in rows:
        if row[1]:
            counts["gold_left_out"] += 1
        elif row[8]:
            counts["flagged_left_out"] += 1
        else:
            kept.append(row)
    if not kept:
        raise ReportRefused("The chosen campaigns have no judgments of regular items yet.")

    face_set: set[int] = set()
    for _, _, face, left, right, *_ in kept:
        face_set.update(f for f in (face, left, right) if f is not None)
    face_rows = list(
        Face.objects.filter(pk__in=_face_subquery(campaign_ids))
        .order_by("id")
        .values_list(
            "id",
            "generation_id",
            "x0",
            "y0",
            "x1",
            "y1",
            "generation__prompt",
            "generation__model_name",
            "generation__model_version",
        )
    )
    face_rows = [r for r in face_rows if r[0] in face_set]
    face_ids = np.array([r[0] for r in face_rows], np.int64)
    code = {int(f): i for i, f in enumerate(face_ids)}
    generation_ids = np.array([r[1] for r in face_rows], np.int64)
    size_px = np.array([min(r[4] - r[2], r[5] - r[3]) for r in face_rows], np.float64)
    prompts, prompt_code = np.unique(
        np.array([r[6] for r in face_rows], dtype=object), return_inverse=True
    )
    dm_text = [Generation(model_name=r[7], model_version=r[8]).dm_label for r in face_rows]
    dm_labels, dm_code = np.unique(np.array(dm_text, dtype=object), return_inverse=True)
    _, image_code = np.unique(generation_ids, return_inverse=True)
    faces = stats.Faces(prompt=prompt_code, image=image_code, dm=dm_code)

    annotator_ids = sorted({r[0] for r in kept})
    annotator_code = {a: i for i, a in enumerate(annotator_ids)}
    likert_rows = [r for r in kept if r[6] is not None]
    pair_rows = [r for r in kept if r[7]]
    likert = None
    if likert_rows:
        likert = stats.LikertJudgments(
            face=[code[r[2]] for r in likert_rows],
            annotator=[annotator_code[r[0]] for r in likert_rows],
            rating=[float(r[6] or 0) for r in likert_rows],  # None was filtered out above
        )
    pairwise = None
    if pair_rows:
        shown_left: list[int] = []
        shown_right: list[int] = []
        outcome: list[int] = []
        for r in pair_rows:
            # Choices are relative to what the annotator saw; the item stores the shown order.
            shown_swapped = r[5] is not None and r[5] == r[4]
            first, second = (r[4], r[3]) if shown_swapped else (r[3], r[4])
            shown_left.append(code[first])
            shown_right.append(code[second])
            outcome.append(int(OUTCOME[r[7]]))
        pairwise = stats.PairwiseJudgments(
            left_face=shown_left,
            right_face=shown_right,
            annotator=[annotator_code[r[0]] for r in pair_rows],
            outcome=outcome,
        )
    counts.update(
        likert_judgments=len(likert_rows), pairwise_judgments=len(pair_rows), faces=len(face_ids)
    )

    raw: dict[str, np.ndarray] = {}
    info: list[dict[str, Any]] = []
    for version in versions:
        name = metric_name(version)
        values = _metric_values(version, face_ids, generation_ids)
        raw[name] = values
        info.append(_info(version, name, variant=""))
        aggregation = settings["image_aggregation"]
        if version.level == MetricVersion.Level.FACE and aggregation != "mean":
            variant = f"{name} [{aggregation} face]"
            raw[variant] = _aggregated_face_values(version, generation_ids, aggregation)
            info.append(_info(version, variant, variant=aggregation))
    oriented = {
        m["name"]: raw[m["name"]] if m["higher_is_better"] else -raw[m["name"]] for m in info
    }
    counts["scored"] = {m["name"]: int(np.isfinite(raw[m["name"]]).sum()) for m in info}  # type: ignore[assignment]
    return ReportInputs(
        face_ids=face_ids,
        generation_ids=generation_ids,
        size_px=size_px,
        faces=faces,
        dm_labels=[str(d) for d in dm_labels],
        prompts=[str(p) for p in prompts],
        annotators=_pseudonyms(campaign_ids, annotator_ids),
        likert=likert,
        pairwise=pairwise,
        metrics=oriented,
        raw_metrics=raw,
        metric_info=info,
        counts=counts,
    )


def _face_subquery(campaign_ids: Sequence[int]) -> Any:
    """Every face an item of the campaigns shows, as one subquery (no giant IN lists)."""
    items = Item.objects.filter(campaign_id__in=campaign_ids)
    return Face.objects.filter(
        Q(pk__in=items.values("face_id"))
        | Q(pk__in=items.values("left_face_id"))
        | Q(pk__in=items.values("right_face_id"))
    ).values("pk")


def _info(version: MetricVersion, name: str, *, variant: str) -> dict[str, Any]:
    return {
        "name": name,
        "metric_version": version.pk,
        "metric": version.metric,
        "label": str(version),
        "level": "image" if variant else version.level,
        "higher_is_better": version.higher_is_better,
        "image_aggregation": variant or None,
    }


def _metric_values(
    version: MetricVersion, face_ids: np.ndarray, generation_ids: np.ndarray
) -> np.ndarray:
    values = np.full(len(face_ids), np.nan)
    if version.level == MetricVersion.Level.FACE:
        index = {int(f): i for i, f in enumerate(face_ids)}
        scores = Score.objects.filter(
            metric_version=version, face__isnull=False, value__isnull=False
        )
        for face, value in scores.filter(
            face_id__in=Face.objects.filter(pk__in=_face_ids_query(face_ids))
        ).values_list("face_id", "value"):
            if face in index:
                values[index[face]] = value
        return values
    by_generation = dict(
        Score.objects.filter(metric_version=version, generation__isnull=False, value__isnull=False)
        .filter(
            generation_id__in=Generation.objects.filter(
                pk__in=_generation_ids_query(generation_ids)
            )
        )
        .values_list("generation_id", "value")
    )
    for i, generation in enumerate(generation_ids):
        values[i] = by_generation.get(int(generation), np.nan)
    return values


def _face_ids_query(face_ids: np.ndarray) -> Any:
    # Bounded by the id range, then filtered in Python: avoids one SQL variable per face.
    if not len(face_ids):
        return Face.objects.none().values("pk")
    return Face.objects.filter(pk__gte=int(face_ids.min()), pk__lte=int(face_ids.max())).values(
        "pk"
    )


def _generation_ids_query(generation_ids: np.ndarray) -> Any:
    if not len(generation_ids):
        return Generation.objects.none().values("pk")
    return Generation.objects.filter(
        pk__gte=int(generation_ids.min()), pk__lte=int(generation_ids.max())
    ).values("pk")


def _aggregated_face_values(
    version: MetricVersion, generation_ids: np.ndarray, aggregation: str
) -> np.ndarray:
    """Per face: ``aggregation`` of the metric over all scored faces of its generation."""
    wanted = {int(g) for g in generation_ids}
    per_generation: dict[int, list[tuple[float, float]]] = {}  # generation -> (value, size)
    scores = (
        Score.objects.filter(metric_version=version, face__isnull=False, value__isnull=False)
        .filter(
            face__generation_id__in=Generation.objects.filter(
                pk__in=_generation_ids_query(generation_ids)
            )
        )
        .order_by("face_id")
        .values_list("face__generation_id", "value", "face__x0", "face__y0", "face__x1", "face__y1")
    )
    for generation, value, x0, y0, x1, y1 in scores:
        if generation in wanted and value is not None:
            per_generation.setdefault(generation, []).append((float(value), min(x1 - x0, y1 - y0)))
    aggregate: dict[int, float] = {}
    for generation, pairs in per_generation.items():
        if aggregation == "min":
            aggregate[generation] = min(v for v, _ in pairs)
        else:  # largest: the first of the largest faces (ordered by face id) on a tie
            aggregate[generation] = max(pairs, key=lambda p: p[1])[0]
    return np.array([aggregate.get(int(g), np.nan) for g in generation_ids], np.float64)


def _pseudonyms(campaign_ids: Sequence[int], annotator_ids: Sequence[int]) -> list[str]:
    """Each annotator's pseudonym in the first chosen campaign they joined (reports never name users)."""
    first: dict[int, str] = {}
    for user, alias in (
        Membership.objects.filter(campaign_id__in=campaign_ids)
        .order_by("campaign_id")
        .values_list("annotator_id", "pseudonym")
    ):
        first.setdefault(user, alias)
    return [first.get(a, f"annotator-{i}") for i, a in enumerate(annotator_ids)]


# --- computing the results ----------------------------------------------------------------


def _engine(
    inputs_faces: stats.Faces,
    metrics: Mapping[str, np.ndarray],
    likert: stats.LikertJudgments | None,
    pairwise: stats.PairwiseJudgments | None,
    *,
    n_boot: int,
    settings: Mapping[str, Any],
) -> dict[str, Any]:
    with warnings.catch_warnings():
        # Degenerate subsets (one DM, constant ratings) give NaN statistics, stored as null.
        warnings.simplefilter("ignore", RuntimeWarning)
        return stats.alignment_report(
            faces=inputs_faces,
            metrics=metrics,
            likert=likert,
            pairwise=pairwise,
            n_boot=n_boot,
            seed=settings["seed"],
            level=settings["level"],
            resample_annotators=settings["resample_annotators"],
        )


def human_face_scores(inputs: ReportInputs) -> tuple[np.ndarray, np.ndarray, str]:
    """Per face: the humans' score and how many judgments it rests on.

    Likert campaigns give the mean rating; a face judged only pairwise gets its share of
    comparisons won (a tie or both-bad counts half).
    """
    n = inputs.faces.n_faces
    score = np.full(n, np.nan)
    count = np.zeros(n, np.int64)
    kind = "mean rating"
    if inputs.likert is not None:
        sums = np.bincount(inputs.likert.face, inputs.likert.rating, n)
        count = np.bincount(inputs.likert.face, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
    if inputs.pairwise is not None:
        p = inputs.pairwise
        label = p.human_label().astype(np.float64)
        won_left = np.where(label > 0, 1.0, np.where(label < 0, 0.0, 0.5))
        wins = np.bincount(p.left_face, won_left, n) + np.bincount(p.right_face, 1.0 - won_left, n)
        games = np.bincount(p.left_face, minlength=n) + np.bincount(p.right_face, minlength=n)
        only_pairwise = (count == 0) & (games > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(only_pairwise, wins / np.maximum(games, 1), score)
        count = np.where(only_pairwise, games, count)
        if inputs.likert is None:
            kind = "share of comparisons won"
    return score, count, kind


def _subset(
    inputs: ReportInputs, keep: np.ndarray
) -> tuple[stats.Faces, dict[str, np.ndarray], Any, Any] | None:
    """The engine's inputs restricted to the faces in ``keep``, codes made contiguous again."""
    index = np.flatnonzero(keep)
    if len(index) < 3:
        return None
    new_code = np.full(inputs.faces.n_faces, -1)
    new_code[index] = np.arange(len(index))
    recode = lambda values: np.unique(values, return_inverse=True)[1]  # noqa: E731
    faces = stats.Faces(
        prompt=recode(inputs.faces.prompt[index]),
        image=recode(inputs.faces.image[index]),
        dm=recode(inputs.faces.dm[index]),
    )
    likert = pairwise = None
    if inputs.likert is not None:
        rows = keep[inputs.likert.face]
        if rows.any():
            likert = stats.LikertJudgments(
                face=new_code[inputs.likert.face[rows]],
                annotator=recode(inputs.likert.annotator[rows]),
                rating=inputs.likert.rating[rows],
            )
    if inputs.pairwise is not None:
        p = inputs.pairwise
        rows = keep[p.left_face] & keep[p.right_face]
        if rows.any():
            pairwise = stats.PairwiseJudgments(
                left_face=new_code[p.left_face[rows]],
                right_face=new_code[p.right_face[rows]],
                annotator=recode(p.annotator[rows]),
                outcome=p.outcome[rows],
            )
    if likert is None and pairwise is None:
        return None
    return faces, {k: v[index] for k, v in inputs.metrics.items()}, likert, pairwise


BREAKDOWN_COLUMNS = ("face_spearman", "campaign_accuracy_with_ties")


def _breakdowns(
    inputs: ReportInputs, settings: Mapping[str, Any], human: np.ndarray
) -> dict[str, list[dict[str, Any]]]:
    """Per DM and per face-size tertile: the face-level agreement of each metric, with CIs."""
    groups: dict[str, list[tuple[str, np.ndarray]]] = {
        "dm": [(label, inputs.faces.dm == k) for k, label in enumerate(inputs.dm_labels)]
    }
    edges = np.quantile(inputs.size_px, [1 / 3, 2 / 3]) if len(inputs.size_px) else np.zeros(2)
    size_bin = np.searchsorted(edges, inputs.size_px, side="right")
    groups["face_size"] = [
        (f"{name} ({_size_range(inputs.size_px[size_bin == b])})", size_bin == b)
        for b, name in enumerate(SIZE_BINS)
    ]
    out: dict[str, list[dict[str, Any]]] = {}
    for group, subsets in groups.items():
        rows = []
        for label, keep in subsets:
            row: dict[str, Any] = {
                "label": label,
                "n_faces": int(keep.sum()),
                "human_mean": _mean(human[keep]),
                "metrics": {},
            }
            part = _subset(inputs, keep)
            if part is not None:
                faces, metrics, likert, pairwise = part
                try:
                    result = _engine(
                        faces,
                        metrics,
                        likert,
                        pairwise,
                        n_boot=settings["breakdown_n_boot"],
                        settings=settings,
                    )
                except (
                    ValueError
                ) as exc:  # e.g. a subset with one rating each: nothing to correlate
                    row["note"] = str(exc)
                else:
                    for r in result["headline"]["rows"]:
                        row["metrics"][r["metric"]] = {
                            c: r["values"][c] for c in BREAKDOWN_COLUMNS if c in r["values"]
                        }
            rows.append(row)
        out[group] = rows
    return out


def _size_range(sizes: np.ndarray) -> str:
    return f"{sizes.min():.0f}–{sizes.max():.0f} px" if len(sizes) else "none"


def _mean(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if len(values) else None


def _finite_list(values: np.ndarray) -> list[float | None]:
    return [float(v) if math.isfinite(v) else None for v in values.tolist()]


def _gold_summary(campaign_ids: Sequence[int]) -> dict[str, Any]:
    """Gold accuracy per annotator as the campaigns recorded it (gold items are not alignment data)."""
    rows = []
    for m in (
        Membership.objects.filter(campaign_id__in=campaign_ids)
        .order_by("campaign_id", "pseudonym")
        .values("campaign_id", "pseudonym", "gold_judged", "gold_correct", "paused_at")
    ):
        rows.append(
            {
                "campaign": m["campaign_id"],
                "annotator": m["pseudonym"],
                "gold_judged": m["gold_judged"],
                "gold_correct": m["gold_correct"],
                "gold_accuracy": m["gold_correct"] / m["gold_judged"] if m["gold_judged"] else None,
                "paused": m["paused_at"] is not None,
            }
        )
    return {"per_annotator": rows}


def build_results(
    *,
    campaigns: Iterable[Campaign | int],
    metric_versions: Iterable[MetricVersion | int],
    settings: Mapping[str, Any] | None = None,
    job_id: int | None = None,
) -> dict[str, Any]:
    """Every number of a report, as JSON-able data (see the module docstring for the steps)."""
    settings = normalise_settings(settings)
    campaign_ids = _campaign_ids(campaigns)

    def note(line: str, done: int) -> None:
        if job_id is not None:
            job_progress.log(job_id, line)
            job_progress.advance(job_id, done)

    inputs = gather_inputs(
        campaigns=campaign_ids, metric_versions=metric_versions, settings=settings
    )
    note(
        f"{inputs.faces.n_faces} faces, {inputs.counts['likert_judgments']} ratings, "
        f"{inputs.counts['pairwise_judgments']} comparisons, {len(inputs.metrics)} metric columns",
        1,
    )
    results = _engine(
        inputs.faces,
        inputs.metrics,
        inputs.likert,
        inputs.pairwise,
        n_boot=settings["n_boot"],
        settings=settings,
    )
    note(f"alignment report with {settings['n_boot']} resamples done", 2)
    human, n_judgments, human_kind = human_face_scores(inputs)
    results["breakdowns"] = _breakdowns(inputs, settings, human)
    note("breakdowns by DM and face size done", 3)
    results["results_version"] = RESULTS_VERSION
    results["report_settings"] = settings
    results["campaigns"] = list(
        Campaign.objects.filter(pk__in=campaign_ids).order_by("id").values("id", "name", "protocol")
    )
    results["metric_info"] = inputs.metric_info
    results["dm_labels"] = inputs.dm_labels
    results["annotators"] = inputs.annotators
    results["counts"] = inputs.counts
    results["gold"] = _gold_summary(campaign_ids)
    results["faces"] = {
        "human_score": human_kind,
        "face_id": inputs.face_ids.tolist(),
        "generation_id": inputs.generation_ids.tolist(),
        "dm": inputs.faces.dm.tolist(),
        "prompt": inputs.faces.prompt.tolist(),
        "size_px": _finite_list(inputs.size_px),
        "human": _finite_list(human),
        "n_judgments": n_judgments.tolist(),
        "values": {name: _finite_list(v) for name, v in inputs.raw_metrics.items()},
    }
    return results


def comparable(results: Mapping[str, Any]) -> dict[str, Any]:
    """The results without what legitimately changes between two builds (wall-clock timings)."""
    return {k: v for k, v in results.items() if k != "timings_s"}


# --- jobs --------------------------------------------------------------------------------------


def start_report_job(
    *,
    title: str,
    campaigns: Iterable[Campaign | int],
    metric_versions: Iterable[MetricVersion | int],
    settings: Mapping[str, Any] | None = None,
    created_by: Any = None,
) -> Job:
    """Create the (empty) ``Report`` and its job; the job fills ``Report.results`` on the default queue."""
    from benchmark.tasks import build_report_task

    settings = normalise_settings(settings)
    campaign_ids = _campaign_ids(campaigns)
    versions = _version_list(metric_versions)
    if not campaign_ids:
        raise ReportRefused("Choose at least one campaign.")
    if Campaign.objects.filter(pk__in=campaign_ids).count() != len(campaign_ids):
        raise ReportRefused("Some campaigns do not exist.")
    if not versions:
        raise ReportRefused("Choose at least one metric version.")
    with transaction.atomic():
        report = Report.objects.create(
            title=title.strip() or "Report", settings=settings, created_by=created_by
        )
        report.campaigns.set(campaign_ids)
        report.metric_versions.set(versions)
        job = Job.objects.create(
            kind=Job.Kind.REPORT,
            config={
                "report_id": report.pk,
                "campaigns": campaign_ids,
                "metric_versions": [v.pk for v in versions],
                "settings": settings,
            },
            created_by=created_by,
            progress_total=3,
        )
        Report.objects.filter(pk=report.pk).update(job=job)
        build_report_task.delay_on_commit(job.pk)
    return job


def rebuild_report(report: Report, *, created_by: Any = None) -> Job:
    """A new report from the same campaigns, metric versions and settings (numbers are identical
    unless the data changed: the old report stays frozen as it was)."""
    return start_report_job(
        title=f"{report.title} (rebuilt)",
        campaigns=list(report.campaigns.values_list("id", flat=True)),
        metric_versions=list(report.metric_versions.values_list("id", flat=True)),
        settings=report.settings,
        created_by=created_by,
    )


def run_report_job(job_id: int) -> dict[str, Any]:
    """Body of a report job: build the results and store them on the report."""
    job = Job.objects.get(pk=job_id)
    report = Report.objects.get(pk=job.config["report_id"])
    results = build_results(
        campaigns=report.campaigns.all(),
        metric_versions=report.metric_versions.all(),
        settings=report.settings,
        job_id=job_id,
    )
    Report.objects.filter(pk=report.pk).update(results=results)
    best = results["headline"]["best"]
    return {"report_id": report.pk, "best": best, "n_faces": results["data"]["n_faces"]}


# --- reading results -----------------------------------------------------------------------


COLUMN_LABELS = {
    "face_spearman": "Spearman ρ (face)",
    "face_kendall": "Kendall τ-b (face)",
    "face_pearson": "Pearson r (face)",
    "image_spearman": "Spearman ρ (image)",
    "image_kendall": "Kendall τ-b (image)",
    "image_pearson": "Pearson r (image)",
    "likert_pairs_accuracy_with_ties": "Pair accuracy with ties (from ratings)",
    "likert_pairs_accuracy_without_ties": "Pair accuracy, no ties (from ratings)",
    "campaign_accuracy_with_ties": "Pair accuracy with ties (pairwise)",
    "campaign_accuracy_without_ties": "Pair accuracy, no ties (pairwise)",
    "dm_spearman_vs_human_mean": "DM Spearman vs human mean",
    "dm_kendall_vs_human_mean": "DM Kendall vs human mean",
    "dm_spearman_vs_bradley_terry": "DM Spearman vs Bradley–Terry",
    "dm_kendall_vs_bradley_terry": "DM Kendall vs Bradley–Terry",
}


def format_number(value: Any, digits: int = 3) -> str:
    return (
        f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"
    )


def ci_text(ci: Mapping[str, Any] | None) -> str:
    """ "0.781 [0.652, 0.882]": a point with its interval, "–" where there is none."""
    if not ci or ci.get("point") is None:
        return "–"
    if ci.get("low") is None:
        return format_number(ci["point"])
    return f"{format_number(ci['point'])} [{format_number(ci['low'])}, {format_number(ci['high'])}]"


def negated(ci: Mapping[str, Any]) -> dict[str, Any]:
    """The interval of −x from that of x (low and high swap)."""

    def flip(v: Any) -> Any:
        return None if v is None else -v

    return {
        "point": flip(ci.get("point")),
        "low": flip(ci.get("high")),
        "high": flip(ci.get("low")),
    }


CSV_COLUMNS = ["section", "metric", "statistic", "subject", "field", "value", "path"]


def _walk(value: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], float]]:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        yield path, value
    elif isinstance(value, Mapping):
        for key, inner in value.items():
            yield from _walk(inner, (*path, str(key)))
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _walk(inner, (*path, str(i)))


def number_rows(results: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every number in ``results`` as one long-format row (nulls and settings text are not numbers).

    ``path`` locates the number in ``report.json``; section / metric / statistic / subject /
    field say what it is for the main tables, so the CSV reads without the JSON beside it.
    """
    for path, number in _walk(results, ()):
        row = {
            "section": path[0],
            "metric": "",
            "statistic": "",
            "subject": "",
            "field": path[-1],
            "value": number,
            "path": "/".join(path),
        }
        # An unexpected shape keeps only its path, which is always exact.
        with contextlib.suppress(IndexError, ValueError, KeyError, TypeError):
            _describe(row, path, results)
        yield row


def _describe(row: dict[str, Any], path: tuple[str, ...], results: Mapping[str, Any]) -> None:
    section = path[0]
    dm_labels = results.get("dm_labels", [])
    if section == "headline" and path[1] == "rows" and path[3] == "values":
        row.update(metric=results["headline"]["rows"][int(path[2])]["metric"], statistic=path[4])
    elif section == "headline" and path[1] == "human_ceiling":
        row.update(metric="human ceiling", statistic=path[2])
    elif section == "differences":
        pair = results["differences"][path[1]][int(path[2])]
        row.update(metric=f"{pair['a']} − {pair['b']}", statistic=path[1])
    elif section == "dm_leaderboard":
        if path[1] == "metric_mean":
            row.update(metric=path[2], statistic="metric_mean", subject=dm_labels[int(path[3])])
        elif path[1] in ("human_mean", "bradley_terry_log_strength"):
            row.update(metric="humans", statistic=path[1], subject=dm_labels[int(path[2])])
        else:
            row.update(statistic=path[1])
    elif section == "breakdowns":
        block = results["breakdowns"][path[1]][int(path[2])]
        row.update(statistic=path[1], subject=block["label"])
        if path[3] == "metrics":
            row.update(metric=path[4], statistic=f"{path[1]}: {path[5]}")
    elif section == "faces":
        face_ids = results["faces"]["face_id"]
        if path[1] == "values":
            row.update(metric=path[2], subject=f"face {face_ids[int(path[3])]}", field="value")
        else:
            row.update(subject=f"face {face_ids[int(path[2])]}", field=path[1])
    elif section == "reliability" and path[-1].isdigit():
        row.update(statistic="/".join(path[1:-1]), subject=results["annotators"][int(path[-1])])
    elif section == "tie_thresholds":
        row.update(metric=path[2], statistic=f"{path[1]} tie threshold")
