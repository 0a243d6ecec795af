"""DM evaluation jobs: a tuned model against its base, same prompts, same seeds, with CIs.

Launched by an admin (``benchmark.launch``: page, API, ``manage.py evaluate_dm``); the body runs
on the GPU queue. Steps of ``run_evaluate_job``:

1. Generate every (prompt, seed) of the held-out human prompt set (and of the general prompts
   without people, for the general-ability check) with the base model, then with the tuned one
   (a fine-tuning job's LoRA or folder, or a path), into one evaluation dataset under the labels
   ``base`` and ``tuned:…``. Both runs use ``benchmark.generation.generate_into_dataset``: the
   same batches and per-image seeds, so twin images start from the same noise; a rerun resumes.
2. Detect faces in the human-prompt images.
3. Score, in this worker, every chosen metric whose weights are present (Face Score,
   ImageReward, HPS v2, aesthetic, FQA, …); a metric whose files are missing is reported as
   skipped, with the files, never faked. Scoring runs here rather than as a chained scoring
   job because a GPU worker with one slot waiting for another GPU job would wait for itself;
   scores are stored as ``Score`` rows of the usual metric versions, so the benchmark pages see
   them too, and a rerun scores only what is missing.
4. Report (``Job.result``; the page ``evaluation-detail`` renders it): for each metric the mean
   paired difference tuned − base over twin images, with a 95% bootstrap interval that
   resamples prompts (``benchmark.stats.paired``). Face-level metrics are first reduced to one
   value per image (the mean over its faces, or its largest face); images without a face drop
   their pair (counted). Image-level metrics on the human prompts, the share of images with a
   detected face, and a general-ability block (image-level metrics on the prompts without
   people) complete it.

``create_evaluation_campaign`` is the one click after it: a pairwise human campaign whose items
put the largest faces of the base and the tuned image of the same prompt and seed side by side.
"""

from __future__ import annotations

import io
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from django import forms
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, QuerySet
from django.urls import reverse
from PIL import Image

from annotator.assignment import Refused
from annotator.campaigns import add_annotators
from annotator.models import Campaign, Dataset, Face, Generation, Item
from benchmark.generation import (
    MAX_REQUESTS,
    GenerationRun,
    PromptFieldsMixin,
    check_detector,
    check_text2img_model,
    default_model_name,
    free_accelerator_memory,
    generate_into_dataset,
)
from benchmark.launch import LaunchForm, LaunchKind, ServerPathField, check_input_path, register
from benchmark.models import MetricVersion, Score
from benchmark.stats.paired import paired_difference
from jobs import progress
from jobs.models import Job
from ml import metrics as metric_zoo
from ml.generate import GenerateSettings
from ml.prompts import GENERAL_PROMPTS

logger = logging.getLogger(__name__)

BASE, TUNED = "base", "tuned"
AGGREGATES = ("mean", "largest")
# The metrics; those whose weights are missing are reported as skipped.
DEFAULT_METRICS = (
    "face_score",
    "imagereward",
    "hps_v2",
    "aesthetic",
    "aesthetic_face",
    "magface",
    "cr_fiqa",
)
SCORE_BATCH = 16
CAMPAIGN_INSTRUCTIONS = (
    "Two faces drawn from the same prompt. Which face looks better: natural, well-formed, "
    "with no distortions? Choose tie when they are equally good, both bad when neither is."
)

GENERATE_HELP = {
    "settings": {
        "steps": "Denoising steps per image (the same for both models).",
        "guidance": "Classifier-free guidance scale.",
        "width": "Image width in pixels.",
        "height": "Image height in pixels.",
        "negative_prompt": "Negative prompt for every image (empty: none).",
        "batch_size": "Images per pipeline call (the same for both models, so twins share batches).",
    }
}


def finetune_jobs() -> QuerySet[Job]:
    return Job.objects.filter(kind=Job.Kind.FINETUNE_DM, status=Job.Status.SUCCEEDED)


class EvaluateDMForm(PromptFieldsMixin, LaunchForm):
    settings_classes = {"settings": (GenerateSettings, "")}
    settings_help = GENERATE_HELP
    field_order = [
        "tuned_job",
        "tuned_lora",
        "tuned_model",
        "model",
        "model_config",
        "prompt_source",
        "prompt_text",
        "prompt_format",
        "held_out_fraction",
        "split_seed",
        "prompt_limit",
        "seed_count",
        "seed_list",
        "general_prompts",
        "general_limit",
        "metrics",
        "face_aggregate",
        "n_boot",
        "ci_level",
        "boot_seed",
        "detector",
        "dataset_name",
    ]

    tuned_job = forms.ModelChoiceField(
        queryset=finetune_jobs(),
        required=False,
        help_text="The fine-tuning job whose output is the tuned model (its base model is the base, unless given below).",
    )
    tuned_lora = ServerPathField(
        required=False,
        label="Tuned LoRA",
        help_text="Or: LoRA weights to apply to the base model.",
    )
    tuned_model = ServerPathField(
        required=False,
        label="Tuned model",
        help_text="Or: a tuned text-to-image diffusers folder.",
    )
    model = ServerPathField(
        required=False,
        label="Base model",
        help_text="The base text-to-image model (default: the fine-tuning job's model).",
    )
    model_config = ServerPathField(
        want="dir",
        required=False,
        label="Base model config",
        help_text="For a single-file base model: a diffusers folder of the same architecture.",
    )
    general_prompts = forms.BooleanField(
        required=False,
        initial=True,
        help_text="Also generate the built-in prompts without people: the general-ability check (image-level metrics).",
    )
    general_limit = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="Use only the first this many general prompts. Empty: all.",
    )
    metrics = forms.MultipleChoiceField(
        choices=lambda: [(name, name) for name in metric_zoo.available()],
        initial=list(DEFAULT_METRICS),
        widget=forms.CheckboxSelectMultiple,
        help_text="Metrics to score; those whose weight files are missing are reported and skipped.",
    )
    face_aggregate = forms.ChoiceField(
        choices=[
            ("mean", "Mean over the faces of an image"),
            ("largest", "The largest face of an image"),
        ],
        initial="mean",
        help_text="How face-level scores become one value per image before pairing twins.",
    )
    n_boot = forms.IntegerField(
        initial=2000, min_value=100, max_value=100_000, help_text="Bootstrap resamples of prompts."
    )
    ci_level = forms.FloatField(
        initial=0.95, min_value=0.5, max_value=0.999, help_text="Confidence level of the intervals."
    )
    boot_seed = forms.IntegerField(initial=0, min_value=0, help_text="Seed of the bootstrap.")
    detector = forms.CharField(
        initial="auto",
        help_text="Face detector: auto (RetinaFace when its weights are present, else Haar), haar, …",
    )
    dataset_name = forms.CharField(
        required=False,
        max_length=200,
        help_text="The evaluation dataset (default: 'evaluation #<job id>').",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["prompt_source"].initial = "human_held_out"
        self.fields["seed_count"].initial = 2

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return {**super().defaults(), "prompt_source": "human_held_out", "seed_count": 2}

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self.clean_prompts_and_seeds(cleaned)
        job = cleaned.get("tuned_job")
        given = [name for name in ("tuned_job", "tuned_lora", "tuned_model") if cleaned.get(name)]
        if len(given) != 1 and not any(n in self.errors for n in ("tuned_lora", "tuned_model")):
            self.add_error(
                "tuned_job",
                "Choose exactly one tuned model: a fine-tuning job, a LoRA or a folder.",
            )
        base_model = cleaned.get("model") or (job.config.get("model") if job else "")
        base_config = cleaned.get("model_config") or (
            (job.config.get("model_config") or None) if job and not cleaned.get("model") else None
        )
        if not base_model and "model" not in self.errors:
            self.add_error("model", "Give the base model (or choose a fine-tuning job).")
        if base_model and "model" not in self.errors and "model_config" not in self.errors:
            if job and not cleaned.get("model"):
                try:
                    check_input_path(base_model)
                except forms.ValidationError as exc:
                    self.add_error("tuned_job", exc)
            check_text2img_model(self, base_model, base_config)
        if cleaned.get("tuned_model") and "tuned_model" not in self.errors:
            from ml.sd import ModelUnavailable, inspect_model

            try:
                if inspect_model(cleaned["tuned_model"])["in_channels"] != 4:
                    self.add_error("tuned_model", "The tuned model must be a text-to-image model.")
            except (ModelUnavailable, OSError, ValueError) as exc:
                self.add_error("tuned_model", str(exc))
        check_detector(self, cleaned.get("detector") or "auto")
        if not self.errors:
            self._sides(cleaned, base_model, base_config)
        return cleaned

    def _sides(self, cleaned: dict[str, Any], base_model: str, base_config: str | None) -> None:
        """The base and tuned models as config entries, and the general prompts."""
        from benchmark.finetuning import tuned_model

        version = default_model_name(base_model)
        cleaned["base"] = {
            "model": base_model,
            "model_config": base_config,
            "lora": None,
            "label": BASE,
            "version": version,
        }
        job = cleaned.get("tuned_job")
        if job is not None:
            try:
                paths = tuned_model(job)
            except ValueError as exc:
                self.add_error("tuned_job", str(exc))
                return
            if paths["lora"]:  # the LoRA goes onto the base given here (or the job's own)
                paths = {"model": base_model, "model_config": base_config, "lora": paths["lora"]}
            label = f"{TUNED}:job-{job.pk}"
        elif cleaned.get("tuned_lora"):
            paths = {
                "model": base_model,
                "model_config": base_config,
                "lora": cleaned["tuned_lora"],
            }
            label = f"{TUNED}:{default_model_name(cleaned['tuned_lora'])}"
        else:
            paths = {"model": cleaned["tuned_model"], "model_config": None, "lora": None}
            label = f"{TUNED}:{default_model_name(cleaned['tuned_model'])}"
        cleaned["tuned"] = {**paths, "label": label[:200], "version": version}
        general: list[str] = []
        if cleaned.get("general_prompts"):
            human = set(cleaned.get("prompts") or [])
            general = [p for p in GENERAL_PROMPTS if p not in human][
                : cleaned.get("general_limit") or None
            ]
        cleaned["general"] = general
        n_images = (
            2 * (len(cleaned.get("prompts") or []) + len(general)) * len(cleaned.get("seeds") or [])
        )
        if n_images > MAX_REQUESTS:
            self.add_error(
                "seed_count", f"{n_images} images is more than one job makes ({MAX_REQUESTS})."
            )


# --- reading scores back --------------------------------------------------------------------


def image_values(version: MetricVersion, generation_ids: Iterable[int]) -> dict[int, float]:
    rows = Score.objects.filter(
        metric_version=version, generation_id__in=list(generation_ids), value__isnull=False
    ).values_list("generation_id", "value")
    return {gid: float(value) for gid, value in rows if value is not None}


def face_values(
    version: MetricVersion, generation_ids: Iterable[int], aggregate: str
) -> dict[int, float]:
    """One value per generation from its faces' scores: their mean, or the largest face's."""
    faces = Face.objects.filter(generation_id__in=list(generation_ids)).values_list(
        "id", "generation_id", "x0", "y0", "x1", "y1"
    )
    scores: dict[int, float] = {
        face_id: float(value)
        for face_id, value in Score.objects.filter(
            metric_version=version, face_id__in=[f[0] for f in faces]
        ).values_list("face_id", "value")
        if face_id is not None and value is not None
    }
    by_generation: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for face_id, gid, x0, y0, x1, y1 in faces:
        by_generation[gid].append((min(x1 - x0, y1 - y0), face_id))
    out: dict[int, float] = {}
    for gid, sized in by_generation.items():
        if aggregate == "largest":
            _, largest = max(sized)  # the campaigns' "largest face": the longest shorter side
            if largest in scores:
                out[gid] = scores[largest]
        else:
            values = [scores[face_id] for _, face_id in sized if face_id in scores]
            if values:
                out[gid] = float(np.mean(values))
    return out


Twins = list[tuple[str, int, int, int]]  # (prompt, seed, base generation id, tuned generation id)


def paired_block(twins: Twins, values: dict[int, float], boot: Mapping[str, Any]) -> dict[str, Any]:
    """The paired difference tuned − base of ``values`` over the twins (a missing value: NaN);
    ``boot`` holds ``n_boot``, ``level`` and ``seed``."""
    base = [values.get(b, np.nan) for _, _, b, _ in twins]
    tuned = [values.get(t, np.nan) for _, _, _, t in twins]
    prompts = [prompt for prompt, _, _, _ in twins]
    return paired_difference(
        base,
        tuned,
        prompts,
        n_boot=int(boot["n_boot"]),
        level=float(boot["level"]),
        seed=int(boot["seed"]),
    ).as_dict()


# --- scoring in this worker -----------------------------------------------------------------


def _open_rgb(generation: Generation) -> Image.Image:
    with generation.image.open("rb") as fh:
        return Image.open(io.BytesIO(fh.read())).convert("RGB")


def score_generations(
    name: str,
    generation_ids: Sequence[int],
    *,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[MetricVersion, int]:
    """Score ``name`` on these generations (image level) or their faces (face level), skipping
    targets this metric version has already scored; the version and how many were scored. The
    model is built for this call and freed after it (an evaluation scores several big models in
    turn; the scoring workers' per-process cache would keep them all)."""
    from benchmark.scoring import worker_device

    metric = metric_zoo.create(
        name, weights_dir=django_settings.FACEBENCH_WEIGHTS_DIR, device=worker_device()
    )
    try:
        version, column, targets, outcomes = _score(metric, generation_ids, on_batch)
    finally:
        del metric
        free_accelerator_memory()
    Score.objects.bulk_create(
        [
            Score(
                metric_version=version,
                **{f"{column}_id": target.pk},
                value=outcome.value,
                error=outcome.error[:2000],
            )
            for target, outcome in zip(targets, outcomes, strict=True)
        ],
        update_conflicts=True,
        unique_fields=["metric_version", column],
        update_fields=["value", "error", "updated_at"],
    )
    return version, len(targets)


def _face_loader(metric: Any, face: Face) -> Callable[[], Any]:
    from benchmark.scoring import face_input

    return lambda: face_input(metric, _open_rgb(face.generation), face)


def _image_loader(generation: Generation, *, with_prompt: bool) -> Callable[[], Any]:
    if with_prompt:
        return lambda: (_open_rgb(generation), generation.prompt)
    return lambda: _open_rgb(generation)


def _score(
    metric: Any, generation_ids: Sequence[int], on_batch: Callable[[int], None] | None
) -> tuple[MetricVersion, str, list[Any], list[Any]]:
    from benchmark.scoring import metric_version_for
    from ml.batching import score_inputs

    version = metric_version_for(metric)
    loaders: list[Callable[[], Any]]
    targets: list[Any]
    if metric.level == "face":
        done = Score.objects.filter(metric_version=version, face__isnull=False)
        targets = list(
            Face.objects.filter(generation_id__in=generation_ids)
            .exclude(pk__in=done.values("face_id"))
            .select_related("generation")
            .order_by("id")
        )
        loaders = [_face_loader(metric, face) for face in targets]
        column = "face"
    else:
        done = Score.objects.filter(metric_version=version, generation__isnull=False)
        targets = list(
            Generation.objects.filter(pk__in=generation_ids)
            .exclude(pk__in=done.values("generation_id"))
            .order_by("id")
        )
        loaders = [_image_loader(g, with_prompt=metric.needs_prompt) for g in targets]
        column = "generation"
    outcomes = score_inputs(metric, loaders, batch_size=SCORE_BATCH, on_batch=on_batch)
    return version, column, targets, outcomes


# --- the job body ---------------------------------------------------------------------------


Observer = Callable[[int, int], None]


def _twins(
    requests: Sequence[tuple[str, int]],
    base: dict[tuple[str, int], int],
    tuned: dict[tuple[str, int], int],
) -> Twins:
    return [
        (p, s, base[(p, s)], tuned[(p, s)])
        for p, s in requests
        if (p, s) in base and (p, s) in tuned
    ]


def _shifted(report: Callable[[int], None], start: int) -> Callable[[int], None]:
    return lambda n: report(start + n)


def run_evaluate_job(job_id: int, *, observer: Observer | None = None) -> dict[str, Any]:
    """Body of an evaluation job (module docstring); ``observer(done, total)`` mirrors progress."""
    from annotator.detection import detect_faces_for_generations

    job = Job.objects.get(pk=job_id)
    config = job.config
    settings = GenerateSettings.from_dict(config["settings"])
    human = [(p, s) for p in config["prompts"] for s in config["seeds"]]
    general = [(p, s) for p in config.get("general") or [] for s in config["seeds"]]
    requests = human + general
    n_images = 2 * len(requests)
    progress.set_total(job_id, n_images)
    dataset, _ = Dataset.objects.get_or_create(
        name=config.get("dataset_name") or f"evaluation #{job_id}",
        defaults={
            "created_by": job.created_by,
            "description": f"Evaluation job #{job_id}: base against tuned, same seeds.",
        },
    )
    should_stop = progress.CancelCheck(job_id)
    result: dict[str, Any] = {
        "dataset": dataset.pk,
        "dataset_name": dataset.name,
        "tuned_job": config.get("tuned_job"),
        "prompts": {"human": len(config["prompts"]), "general": len(config.get("general") or [])},
        "seeds": config["seeds"],
    }

    def report(done: int) -> None:
        Job.objects.filter(pk=job_id).update(progress_done=done)
        if observer is not None:
            observer(done, Job.objects.values_list("progress_total", flat=True).get(pk=job_id))

    # 1. the same (prompt, seed) list with both models
    ids: dict[str, dict[tuple[str, int], int]] = {}
    models: dict[str, Any] = {}
    for offset, side in enumerate((BASE, TUNED)):
        entry = config[side]
        run = GenerationRun(
            dataset=dataset,
            model=entry["model"],
            model_config=entry.get("model_config"),
            lora=entry.get("lora"),
            model_name=entry["label"],
            model_version=entry.get("version") or "",
            settings=settings,
            job_id=job_id,
            extra={"evaluation": job_id, "side": side},
        )
        outcome = generate_into_dataset(
            run,
            requests,
            on_progress=_shifted(report, offset * len(requests)),
            should_stop=should_stop,
            log=lambda line: progress.log(job_id, line),
        )
        ids[side] = outcome.ids
        models[side] = {
            "label": entry["label"],
            "version": entry.get("version") or "",
            "model": entry["model"],
            "lora": entry.get("lora"),
            "sha256": outcome.model["sha256"],
            "lora_sha256": (outcome.model.get("lora") or {}).get("sha256"),
            "generated": outcome.generated,
            "already_there": outcome.already_there,
            "identical_to_earlier": outcome.identical,
        }
        result["models"] = models
        if outcome.stopped:
            raise progress.JobCancelled(result=result)

    # 2. faces of the human-prompt images
    human_twins = _twins(human, ids[BASE], ids[TUNED])
    general_twins = _twins(general, ids[BASE], ids[TUNED])
    human_ids = sorted({g for _, _, b, t in human_twins for g in (b, t)})
    general_ids = sorted({g for _, _, b, t in general_twins for g in (b, t)})
    undetected = Generation.objects.filter(pk__in=human_ids, faces_detected_at__isnull=True)
    detection = detect_faces_for_generations(
        generation_ids=list(undetected.values_list("id", flat=True)),
        detector_name=config.get("detector") or "auto",
    )
    progress.log(job_id, f"{detection['faces']} faces in {detection['generations']} images")

    # 3. scores, here
    metrics: dict[str, dict[str, Any]] = {}
    versions: dict[str, MetricVersion] = {}
    usable = []
    for name in config["metrics"]:
        spec = metric_zoo.get_spec(name)
        missing = metric_zoo.missing_files(name, django_settings.FACEBENCH_WEIGHTS_DIR)
        metrics[name] = {"level": spec.level, "higher_is_better": spec.higher_is_better}
        if missing:
            metrics[name].update(status="skipped", reason=f"missing {', '.join(map(str, missing))}")
            progress.log(
                job_id, f"{name}: skipped, weights missing ({', '.join(map(str, missing))})"
            )
        else:
            usable.append(name)
    targets = {
        name: human_ids if metric_zoo.get_spec(name).level == "face" else human_ids + general_ids
        for name in usable
    }
    n_faces = Face.objects.filter(generation_id__in=human_ids).count()
    score_total = sum(
        n_faces if metric_zoo.get_spec(n).level == "face" else len(targets[n]) for n in usable
    )
    progress.set_total(job_id, n_images + score_total)
    done = n_images
    for name in usable:
        if should_stop():
            result["metrics"] = metrics
            raise progress.JobCancelled(result=result)
        started = time.perf_counter()
        try:
            version, scored = score_generations(
                name, targets[name], on_batch=_shifted(report, done)
            )
        except (metric_zoo.MetricUnavailable, metric_zoo.CheckpointMismatch) as exc:
            metrics[name].update(status="skipped", reason=str(exc))
            progress.log(job_id, f"{name}: skipped ({exc})")
            continue
        done += n_faces if metric_zoo.get_spec(name).level == "face" else len(targets[name])
        report(done)
        versions[name] = version
        metrics[name].update(
            status="scored", version=version.pk, label=str(version), scored_now=scored
        )
        progress.log(
            job_id, f"{name}: {scored} targets scored in {time.perf_counter() - started:.1f} s"
        )

    # 4. paired differences
    boot = {
        "n_boot": int(config.get("n_boot") or 2000),
        "level": float(config.get("ci_level") or 0.95),
        "seed": int(config.get("boot_seed") or 0),
    }
    aggregate = config.get("face_aggregate") or "mean"
    human_block: dict[str, Any] = {}
    general_block: dict[str, Any] = {}
    for name, version in versions.items():
        if version.level == "face":
            values = face_values(version, human_ids, aggregate)
            human_block[name] = {
                **paired_block(human_twins, values, boot),
                "level": "face",
                "aggregate": aggregate,
            }
        else:
            values = image_values(version, human_ids + general_ids)
            human_block[name] = {**paired_block(human_twins, values, boot), "level": "image"}
            if general_twins:
                general_block[name] = {
                    **paired_block(general_twins, values, boot),
                    "level": "image",
                }
    counts = dict(
        Generation.objects.filter(pk__in=human_ids)
        .annotate(n=Count("faces"))
        .values_list("id", "n")
    )
    found = {gid: float(counts.get(gid, 0) > 0) for gid in human_ids}
    per_image = {gid: float(counts.get(gid, 0)) for gid in human_ids}
    result.update(
        metrics=metrics,
        human=human_block,
        general=general_block,
        detection={
            "detector": detection["detector"],
            "faces_found": paired_block(human_twins, found, boot),
            "faces_per_image": paired_block(human_twins, per_image, boot),
        },
        twins={"human": len(human_twins), "general": len(general_twins)},
        settings={**boot, "face_aggregate": aggregate},
    )
    progress.log(
        job_id,
        "report: " + "; ".join(_headline(name, block) for name, block in human_block.items()),
    )
    return result


# --- presenting -----------------------------------------------------------------------------


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4g}"


def difference_text(block: dict[str, Any]) -> str:
    """``+0.123 [+0.05, +0.2] (40 prompts, 80 pairs)`` for a paired block."""
    if block.get("difference") is None:
        return f"no complete pairs ({block.get('n_dropped', 0)} without a value)"
    interval = (
        f" [{_signed(block['low'])}, {_signed(block['high'])}]"
        if block.get("low") is not None
        else ""
    )
    dropped = f", {block['n_dropped']} dropped" if block.get("n_dropped") else ""
    return f"{_signed(block['difference'])}{interval} ({block['n_prompts']} prompts, {block['n_pairs']} pairs{dropped})"


def _headline(name: str, block: dict[str, Any]) -> str:
    return f"{name} {difference_text(block)}"


def _job_summary(job: Job) -> list[tuple[str, str, str]]:
    result = job.result or {}
    if "human" not in result:
        return []
    page = reverse("evaluation-detail", args=[job.pk])
    rows: list[tuple[str, str, str]] = [
        ("Evaluation report", f"tuned − base on {result['twins']['human']} twin images", page),
        (
            "Dataset",
            result.get("dataset_name", ""),
            reverse("dataset-detail", args=[result["dataset"]]),
        ),
    ]
    for name, block in result["human"].items():
        rows.append((f"{name} ({block['level']})", difference_text(block), ""))
    for name, block in (result.get("general") or {}).items():
        rows.append((f"{name}, prompts without people", difference_text(block), ""))
    for name, info in (result.get("metrics") or {}).items():
        if info.get("status") == "skipped":
            rows.append((name, f"skipped: {info.get('reason', '')}", ""))
    if result.get("campaign"):
        rows.append(
            (
                "Pairwise campaign",
                f"#{result['campaign']}",
                reverse("campaign-detail", args=[result["campaign"]]),
            )
        )
    return rows


# --- the one-click pairwise campaign --------------------------------------------------------


def _largest_faces(generation_ids: Iterable[int]) -> dict[int, Face]:
    largest: dict[int, Face] = {}
    for face in Face.objects.filter(generation_id__in=list(generation_ids)).select_related(
        "generation"
    ):
        best = largest.get(face.generation_id)
        if best is None or face.size_px > best.size_px:
            largest[face.generation_id] = face
    return largest


def campaign_face_pairs(job: Job, *, seed: int = 0) -> list[tuple[Face, Face]]:
    """(left, right) pairs of the largest base face and the largest tuned face of each human
    prompt and seed, left/right drawn at random (seeded) and kept. Twins that are one image (a
    tuned model that drew exactly the base image) or that lack a face on either side are left
    out."""
    result, config = job.result or {}, job.config
    labels = {
        side: (config[side]["label"], config[side].get("version") or "") for side in (BASE, TUNED)
    }
    by_side: dict[str, dict[tuple[str, int], int]] = {}
    for side, (name, version) in labels.items():
        rows = Generation.objects.filter(
            dataset_id=result["dataset"], model_name=name, model_version=version
        ).values_list("prompt", "seed", "id")
        by_side[side] = {(prompt, int(s)): pk for prompt, s, pk in rows if s is not None}
    human = [(p, s) for p in config["prompts"] for s in config["seeds"]]
    twins = _twins(human, by_side[BASE], by_side[TUNED])
    faces = _largest_faces(g for _, _, b, t in twins for g in (b, t))
    rng = random.Random(seed)
    pairs = []
    for _, _, base_id, tuned_id in twins:
        if base_id == tuned_id or base_id not in faces or tuned_id not in faces:
            continue
        base_face, tuned_face = faces[base_id], faces[tuned_id]
        pairs.append((base_face, tuned_face) if rng.random() < 0.5 else (tuned_face, base_face))
    return pairs


def create_evaluation_campaign(
    *,
    job: Job,
    created_by: User | None,
    overlap_k: int = 3,
    annotators: Sequence[User] = (),
    name: str = "",
    seed: int = 0,
) -> Campaign:
    """The pairwise campaign base-vs-tuned of a finished evaluation; the same one on a second
    click. ``Refused`` when the job is not a finished evaluation or no twin has two faces."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.kind != Job.Kind.EVALUATE_DM or job.status != Job.Status.SUCCEEDED:
            raise Refused("Only a finished evaluation job can open a campaign.", status=400)
        existing = Campaign.objects.filter(pk=(job.result or {}).get("campaign") or 0).first()
        if existing is not None:
            return existing
        pairs = campaign_face_pairs(job, seed=seed)
        if not pairs:
            raise Refused(
                "No prompt and seed has a detected face in both the base and the tuned image.",
                status=400,
            )
        campaign = Campaign(
            name=name or f"Base vs tuned (evaluation #{job.pk})",
            protocol=Campaign.Protocol.PAIRWISE,
            instructions=CAMPAIGN_INSTRUCTIONS,
            overlap_k=overlap_k,
            blind=True,
            created_by=created_by,
        )
        campaign.full_clean(exclude=["datasets", "annotators"])
        campaign.save()
        campaign.datasets.set([job.result["dataset"]])
        Item.objects.bulk_create(
            [
                Item.for_faces(campaign, pair=pair, judgments_wanted=campaign.overlap_k)
                for pair in pairs
            ]
        )
        add_annotators(campaign=campaign, users=annotators)
        Job.objects.filter(pk=job.pk).update(result={**job.result, "campaign": campaign.pk})
    progress.log(job.pk, f"pairwise campaign #{campaign.pk} with {len(pairs)} items")
    return campaign


register(
    LaunchKind(
        kind=Job.Kind.EVALUATE_DM,
        title="Evaluate a DM",
        description="Generate held-out prompts with a base and a tuned model from the same seeds, score them, and report the paired differences with bootstrap CIs (faces and general ability); one click then opens a pairwise human campaign.",
        form_class=EvaluateDMForm,
        run=run_evaluate_job,
        queue="gpu",
        summary=_job_summary,
    )
)
