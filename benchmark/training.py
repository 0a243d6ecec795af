"""Face Score training jobs: ImageReward (or an earlier Face Score) fine-tuned on face pairs.

Launched by an admin (``benchmark.launch``: page, API, ``manage.py train_face_score``); the body
runs on the GPU queue. Steps of ``run_train_job``:

1. Inputs. Crafted pairs of the chosen crafting jobs (their train split trains, their validation
   split is the "crafted" validation set) and, optionally, human pairs from pairwise campaigns:
   each left/right judgment of a regular item is a (chosen face, other face) pair; items are
   split into train and "human" validation by a seeded hash, so one item is never on both sides.
   Crops (the official Face Score crop of each box) are loaded lazily from the storage.
2. Starting weights: ImageReward, the official Face Score, or a Face Score trained here earlier.
3. ``ml.train.face_score.train_face_score`` into ``FACEBENCH_ARTIFACTS_DIR/job-<id>/train``:
   each step's loss, lr, grad norm and validation accuracies become ``JobRecord`` rows (written
   at most once a second); a cancel stops it at the next step with a checkpoint, and a
   redelivered job resumes from the newest checkpoint.
4. The best checkpoint becomes a weights folder, ``job-<id>/weights/`` (``FaceScore/FS_model.pt``,
   its configs, the tokenizer vocab), loaded strictly into the Face Score metric once as a
   check, and registered as a new ``MetricVersion`` (label "Face Score (trained, job #N)").
5. Follow-ups: a scoring job for the new version (plus the official Face Score and ImageReward
   when their weights are here) over the faces of the chosen dataset, or of the report
   campaigns' datasets; when it is done, a report comparing the new version with the previous
   Face Score and ImageReward versions on the report campaigns.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

from django import forms
from django.conf import settings
from django.db.models import QuerySet
from django.urls import reverse
from PIL import Image, ImageOps

from annotator.models import Campaign, Dataset, Face, Generation, Judgment
from benchmark.launch import LaunchForm, LaunchKind, register, relative_artifact
from benchmark.models import FacePair, MetricVersion
from jobs import progress
from jobs.models import Job, artifact_path
from ml.train.face_score import FaceScoreTrainConfig

logger = logging.getLogger(__name__)

INIT_IMAGEREWARD, INIT_FACE_SCORE = "imagereward", "face_score"
TOKENIZER_FILE = "bert-base-uncased/vocab.txt"
INIT_FILES = {
    INIT_IMAGEREWARD: ("ImageReward/ImageReward.pt", "ImageReward/med_config.json"),
    INIT_FACE_SCORE: ("FaceScore/FS_model.pt", "FaceScore/med_config.json"),
}
CRAFTED_VAL, HUMAN_VAL = "crafted", "human"
LOG_EVERY_S = 30.0

TRAIN_HELP: dict[str, dict[str, str]] = {
    "train": {
        "fix_rate": "Share of the text and vision layers kept frozen (from the bottom); *_proj layers are always frozen.",
        "lr": "Peak learning rate of AdamW (cosine decay after the warmup).",
        "weight_decay": "AdamW weight decay (not on biases and norms).",
        "warmup_steps": "Linear warmup steps.",
        "max_steps": "Optimizer steps in all.",
        "batch_size": "Pairs per micro-batch.",
        "accumulation": "Micro-batches per optimizer step (effective batch = batch size × this).",
        "grad_clip": "Clip the gradient norm to this (0 = no clipping).",
        "mixed_precision": "bf16 autocast on CUDA over fp32 weights, or 'no' (the CPU always runs fp32).",
        "seed": "Seed of the pair order, the flips and the human train/validation split.",
        "val_every": "Validate (pairwise accuracy) every this many steps.",
        "val_batch_size": "Pairs per validation forward pass.",
        "checkpoint_every": "Save a resumable checkpoint every this many steps.",
        "checkpoints_total_limit": "Keep at most this many checkpoints.",
        "prompt": "The fixed prompt every face is scored with.",
        "flip": "Flip both crops of a pair horizontally at random.",
    }
}


def init_choices() -> list[tuple[str, str]]:
    choices = [
        (INIT_IMAGEREWARD, "ImageReward (FACEBENCH_WEIGHTS_DIR/ImageReward/ImageReward.pt)"),
        (INIT_FACE_SCORE, "Official Face Score (FACEBENCH_WEIGHTS_DIR/FaceScore/FS_model.pt)"),
    ]
    for version in trained_versions():
        choices.append((f"version:{version.pk}", str(version)))
    return choices


def trained_versions() -> QuerySet[MetricVersion]:
    return MetricVersion.objects.filter(
        metric="face_score", settings__has_key="weights_dir"
    ).order_by("-id")


class TrainFaceScoreForm(LaunchForm):
    settings_classes = {"train": (FaceScoreTrainConfig, "")}
    settings_help = TRAIN_HELP
    field_order = [
        "crafting_jobs",
        "campaigns",
        "human_val_fraction",
        "init",
        "score_dataset",
        "report_campaigns",
        "report_settings",
    ]

    crafting_jobs = forms.ModelMultipleChoiceField(
        queryset=Job.objects.filter(
            kind=Job.Kind.CRAFT_PAIRS, status__in=[Job.Status.SUCCEEDED, Job.Status.CANCELLED]
        ),
        required=False,
        help_text="Crafting jobs whose pairs train (their train split) and validate (their validation split).",
    )
    campaigns = forms.ModelMultipleChoiceField(
        queryset=Campaign.objects.filter(protocol=Campaign.Protocol.PAIRWISE),
        required=False,
        help_text="Pairwise campaigns whose left/right judgments become human pairs.",
    )
    human_val_fraction = forms.FloatField(
        initial=0.5,
        min_value=0.0,
        max_value=1.0,
        help_text="Share of the human-judged items held out for validation (1 = validation only).",
    )
    init = forms.ChoiceField(
        choices=init_choices,
        initial=INIT_IMAGEREWARD,
        help_text="The weights training starts from.",
    )
    score_dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.all(),
        required=False,
        help_text="Score the new Face Score on this dataset's faces when training is done (default: the report campaigns' datasets).",
    )
    report_campaigns = forms.ModelMultipleChoiceField(
        queryset=Campaign.objects.all(),
        required=False,
        help_text="Campaigns of the report comparing the new Face Score with the previous one and ImageReward (default: the pairwise campaigns above).",
    )
    report_settings = forms.JSONField(
        required=False,
        initial=dict,
        help_text='Settings of that report, e.g. {"n_boot": 1000, "seed": 0}; empty: the defaults.',
    )
    mixed_precision = forms.ChoiceField(
        choices=[("bf16", "bf16"), ("no", "no")],
        initial="bf16",
        help_text=TRAIN_HELP["train"]["mixed_precision"],
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        jobs = list(cleaned.get("crafting_jobs") or [])
        campaigns = list(cleaned.get("campaigns") or [])
        if not jobs and not campaigns:
            self.add_error("crafting_jobs", "Choose crafting jobs, pairwise campaigns or both.")
        elif "crafting_jobs" not in self.errors and "campaigns" not in self.errors:
            n_train = FacePair.objects.filter(
                crafting_job__in=jobs, split=FacePair.Split.TRAIN
            ).count()
            n_human = len(human_pairs([c.pk for c in campaigns]))
            if n_train == 0 and (n_human == 0 or cleaned.get("human_val_fraction") == 1.0):
                self.add_error(
                    "crafting_jobs", "There are no training pairs in these jobs and campaigns."
                )
        init = cleaned.get("init")
        if init:
            try:
                init_weights(init)
            except FileNotFoundError as exc:
                self.add_error("init", str(exc))
        if isinstance(cleaned.get("report_settings"), dict) and cleaned["report_settings"]:
            from benchmark.reports import ReportRefused, normalise_settings

            try:
                cleaned["report_settings"] = normalise_settings(cleaned["report_settings"])
            except (ReportRefused, ValueError, TypeError) as exc:
                self.add_error("report_settings", getattr(exc, "message", str(exc)))
        elif cleaned.get("report_settings") is None:
            cleaned["report_settings"] = {}
        return cleaned


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitWeights:
    checkpoint: Path
    med_config: Path
    tokenizer_dir: Path
    description: str


def init_weights(choice: str) -> InitWeights:
    """The starting checkpoint, its med config and the tokenizer; FileNotFoundError naming the
    missing files."""
    from ml.weights import locate

    shared = Path(settings.FACEBENCH_WEIGHTS_DIR)
    if choice.startswith("version:"):
        version = MetricVersion.objects.filter(
            pk=int(choice.split(":", 1)[1]) if choice[8:].isdigit() else 0
        ).first()
        if version is None or "weights_dir" not in (version.settings or {}):
            raise FileNotFoundError(f"{choice} is not a Face Score version trained here.")
        root = artifact_path(version.settings["weights_dir"])
        files = INIT_FILES[INIT_FACE_SCORE]
        description = f"{version} ({root})"
    elif choice in INIT_FILES:
        root, files, description = shared, INIT_FILES[choice], choice
    else:
        raise FileNotFoundError(f"Unknown starting weights {choice!r}.")
    found = [locate(rel, root) for rel in (*files, TOKENIZER_FILE)]
    if found[2] is None:  # the tokenizer vocab is shared: look in the weights dir too
        found[2] = locate(TOKENIZER_FILE, shared)
    missing = [
        str(root / rel)
        for rel, path in zip((*files, TOKENIZER_FILE), found, strict=True)
        if path is None
    ]
    if missing:
        raise FileNotFoundError(f"Missing weight files: {', '.join(missing)}.")
    checkpoint, med_config, vocab = (p for p in found if p is not None)
    return InitWeights(checkpoint, med_config, vocab.parent, description)


@dataclass(frozen=True)
class HumanPair:
    item_id: int
    good_face_id: int
    bad_face_id: int


def human_pairs(campaign_ids: Sequence[int]) -> list[HumanPair]:
    """Each left/right judgment of a regular pairwise item as (chosen face, other face)."""
    judgments = (
        Judgment.objects.filter(
            item__campaign_id__in=campaign_ids,
            item__campaign__protocol=Campaign.Protocol.PAIRWISE,
            item__is_gold=False,
            choice__in=[Judgment.Choice.LEFT, Judgment.Choice.RIGHT],
        )
        .select_related("item")
        .order_by("id")
    )
    pairs = []
    for judgment in judgments:
        item = judgment.item
        left = judgment.shown_left_face_id or item.left_face_id
        right = item.right_face_id if left == item.left_face_id else item.left_face_id
        assert left is not None and right is not None
        good, bad = (left, right) if judgment.choice == Judgment.Choice.LEFT else (right, left)
        pairs.append(HumanPair(item.pk, good, bad))
    return pairs


def is_validation(seed: int, key: str, fraction: float) -> bool:
    digest = hashlib.sha256(f"val:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _open_stored(field: Any) -> Image.Image:
    with field.open("rb") as fh:
        return ImageOps.exif_transpose(Image.open(io.BytesIO(fh.read()))).convert("RGB")


class LazyPairs(Sequence[tuple[Image.Image, Image.Image]]):
    """(good crop, bad crop) pairs read from the storage when indexed, so a job never holds
    every full-size image in memory at once (the trainer caches 224 px crops itself)."""

    def __init__(self, loaders: Sequence[Callable[[], tuple[Image.Image, Image.Image]]]) -> None:
        self._loaders = list(loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    @overload
    def __getitem__(self, index: int) -> tuple[Image.Image, Image.Image]: ...
    @overload
    def __getitem__(self, index: slice) -> LazyPairs: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return LazyPairs(self._loaders[index])
        return self._loaders[index]()


def _crafted_loader(pair: FacePair) -> Callable[[], tuple[Image.Image, Image.Image]]:
    from ml.metrics.imagereward import crop_face

    def load() -> tuple[Image.Image, Image.Image]:
        return crop_face(_open_stored(pair.good_image), pair.box), crop_face(
            _open_stored(pair.bad_image), pair.box
        )

    return load


def _human_loader(good: Face, bad: Face) -> Callable[[], tuple[Image.Image, Image.Image]]:
    from ml.metrics.imagereward import crop_face

    def load() -> tuple[Image.Image, Image.Image]:
        return (
            crop_face(_open_stored(good.generation.image), good.box),
            crop_face(_open_stored(bad.generation.image), bad.box),
        )

    return load


@dataclass
class TrainingInputs:
    train: LazyPairs
    val_sets: dict[str, LazyPairs]
    counts: dict[str, int]


def training_inputs(config: dict[str, Any]) -> TrainingInputs:
    crafted = FacePair.objects.filter(
        crafting_job_id__in=config.get("crafting_jobs") or []
    ).order_by("id")
    train = [_crafted_loader(p) for p in crafted if p.split == FacePair.Split.TRAIN]
    crafted_val = [_crafted_loader(p) for p in crafted if p.split == FacePair.Split.VAL]
    humans = human_pairs(config.get("campaigns") or [])
    faces = Face.objects.select_related("generation").in_bulk(
        {f for h in humans for f in (h.good_face_id, h.bad_face_id)}
    )
    seed = int(config["train"].get("seed", 0))
    fraction = float(config.get("human_val_fraction") or 0.0)
    human_train: list[Callable[[], tuple[Image.Image, Image.Image]]] = []
    human_val: list[Callable[[], tuple[Image.Image, Image.Image]]] = []
    for pair in humans:
        loader = _human_loader(faces[pair.good_face_id], faces[pair.bad_face_id])
        (
            human_val if is_validation(seed, f"item:{pair.item_id}", fraction) else human_train
        ).append(loader)
    val_sets = {}
    if crafted_val:
        val_sets[CRAFTED_VAL] = LazyPairs(crafted_val)
    if human_val:
        val_sets[HUMAN_VAL] = LazyPairs(human_val)
    counts = {
        "crafted_train": len(train),
        "crafted_val": len(crafted_val),
        "human_train": len(human_train),
        "human_val": len(human_val),
    }
    return TrainingInputs(LazyPairs(train + human_train), val_sets, counts)


# --- the job body -------------------------------------------------------------------------


def build_weights_dir(job: Job, best_checkpoint: Path, tokenizer_dir: Path) -> Path:
    """``job-<id>/weights``: a weights dir the Face Score metric loads as is (FaceScore/ holds the
    checkpoint and its configs, bert-base-uncased/ the vocab). Files are hard links when the
    filesystem allows (a full-size checkpoint is 1.8 GB), copies otherwise."""
    weights = job.artifact_dir / "weights"
    face_score = weights / "FaceScore"
    face_score.mkdir(parents=True, exist_ok=True)
    (weights / "bert-base-uncased").mkdir(exist_ok=True)
    sources = {face_score / best_checkpoint.name: best_checkpoint}
    for name in ("med_config.json", "vision_config.json"):
        if (best_checkpoint.parent / name).is_file():
            sources[face_score / name] = best_checkpoint.parent / name
    sources[weights / TOKENIZER_FILE] = tokenizer_dir / "vocab.txt"
    for target, source in sources.items():
        target.unlink(missing_ok=True)
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    return weights


def register_version(job: Job, weights: Path) -> MetricVersion:
    """Load the trained checkpoint strictly into the Face Score metric (the check that it is
    usable) and register its ``MetricVersion``."""
    from benchmark.scoring import worker_device
    from ml import metrics as metric_zoo

    metric = metric_zoo.create("face_score", weights_dir=weights, device=worker_device())
    sha256, code_version = metric.weights_sha256, metric.code_version
    del metric
    version, _ = MetricVersion.objects.get_or_create(
        metric="face_score",
        weights_sha256=sha256,
        code_version=code_version,
        settings={
            "weights_dir": relative_artifact(weights),
            "checkpoint": relative_artifact(weights / "FaceScore" / "FS_model.pt"),
            "job": job.pk,
        },
        defaults={
            "level": "face",
            "higher_is_better": True,
            "label": f"Face Score (trained, job #{job.pk})",
        },
    )
    return version


def comparison_versions(new: MetricVersion) -> list[MetricVersion]:
    """The previous Face Score version (newest other one) and the newest ImageReward version."""
    out = []
    previous = (
        MetricVersion.objects.filter(metric="face_score").exclude(pk=new.pk).order_by("-id").first()
    )
    if previous is not None:
        out.append(previous)
    image_reward = MetricVersion.objects.filter(metric="imagereward").order_by("-id").first()
    if image_reward is not None:
        out.append(image_reward)
    return out


def schedule_follow_ups(job: Job, version: MetricVersion) -> dict[str, Any]:
    """Start the scoring job of the new version (its report follows when it is done)."""
    from benchmark.scoring import ScoringRefused, start_scoring_job
    from ml import metrics as metric_zoo

    config = job.config
    report_campaigns = list(config.get("report_campaigns") or config.get("campaigns") or [])
    if config.get("score_dataset"):
        dataset_ids = [config["score_dataset"]]
    else:
        dataset_ids = sorted(
            set(Dataset.objects.filter(campaigns__in=report_campaigns).values_list("id", flat=True))
        )
    if not dataset_ids:
        progress.log(
            job.pk,
            "no dataset to score (choose a dataset or report campaigns): no scoring job, no report",
        )
        return {}
    named = [
        name
        for name in ("face_score", "imagereward")
        if not metric_zoo.missing_files(name, settings.FACEBENCH_WEIGHTS_DIR)
    ]
    extra = [
        v
        for v in comparison_versions(version)
        if "weights_dir" in (v.settings or {}) and _loadable(v)
    ]
    then_report = None
    if report_campaigns:
        then_report = {
            "title": f"{version.label} against the previous Face Score and ImageReward",
            "campaigns": report_campaigns,
            "metric_versions": [version.pk, *(v.pk for v in comparison_versions(version))],
            "settings": config.get("report_settings") or {},
        }
    generation_ids = list(
        Generation.objects.filter(dataset_id__in=dataset_ids).values_list("id", flat=True)
    )
    try:
        scoring = start_scoring_job(
            metrics=named,
            generation_ids=generation_ids,
            metric_versions=[version, *extra],
            then_report=then_report,
            created_by=job.created_by,
        )
    except ScoringRefused as exc:
        progress.log(job.pk, f"scoring not started: {exc.message}")
        return {}
    progress.log(
        job.pk,
        f"scoring job #{scoring.pk} started" + (", a report follows it" if then_report else ""),
    )
    return {"scoring_job": scoring.pk, "report_follows": then_report is not None}


def _loadable(version: MetricVersion) -> bool:
    from benchmark.scoring import ScoringRefused, check_version_weights

    try:
        check_version_weights(version)
    except (ScoringRefused, ValueError):
        return False
    return True


Observer = Callable[[int, int], None]


def run_train_job(job_id: int, *, observer: Observer | None = None) -> dict[str, Any]:
    """Body of a training job (see the module docstring); ``observer(step, max_steps)`` mirrors
    the progress written to the job (``manage.py train_face_score`` draws a tqdm bar with it)."""
    from benchmark.scoring import worker_device
    from ml.train.face_score import train_face_score

    job = Job.objects.get(pk=job_id)
    config = job.config
    train_config = FaceScoreTrainConfig.from_dict(config["train"])
    init = init_weights(config.get("init") or INIT_IMAGEREWARD)
    inputs = training_inputs(config)
    if len(inputs.train) == 0:
        raise ValueError("no training pairs: the crafting jobs or campaigns have none")
    progress.set_total(job_id, train_config.max_steps)
    progress.log(
        job_id,
        f"from {init.description}: {len(inputs.train)} training pairs "
        f"({inputs.counts['crafted_train']} crafted, {inputs.counts['human_train']} human); validation "
        + (", ".join(f"{name} {len(pairs)}" for name, pairs in inputs.val_sets.items()) or "none"),
    )
    last_log = [time.monotonic()]

    def flushed(step: int) -> None:
        Job.objects.filter(pk=job_id).update(progress_done=step)
        if observer is not None:
            observer(step, train_config.max_steps)

    recorder = progress.StepRecorder(job_id, on_flush=flushed)

    def on_step(record: dict[str, Any]) -> None:
        recorder(record)
        if "val_accuracy" in record or time.monotonic() - last_log[0] >= LOG_EVERY_S:
            last_log[0] = time.monotonic()
            shown = {
                k: v for k, v in record.items() if k in ("loss", "lr", "grad_norm", "val_accuracy")
            }
            progress.log(job_id, f"step {record['step']}: {_short(shown)}")

    out_dir = job.artifact_dir / "train"
    out_dir.mkdir(parents=True, exist_ok=True)
    device = worker_device()
    try:
        trained = train_face_score(
            init_checkpoint=init.checkpoint,
            med_config=init.med_config,
            tokenizer_dir=init.tokenizer_dir,
            train_pairs=inputs.train,
            val_sets=inputs.val_sets,
            config=train_config,
            out_dir=out_dir,
            device=device,
            on_step=on_step,
            should_stop=progress.CancelCheck(job_id),
        )
    finally:
        recorder.flush()
    if trained.initial_validation:  # the starting weights' accuracy: the curve's step 0
        start = progress.StepRecorder(job_id)
        start({"step": 0, "val_accuracy": trained.initial_validation})
        start.flush()
    result: dict[str, Any] = {
        "steps": trained.steps,
        "best_step": trained.best_step,
        "best_validation": trained.best_validation,
        "initial_validation": trained.initial_validation,
        "final_validation": trained.final_validation,
        "pairs": inputs.counts,
        "init": init.description,
        "device": str(device),
        "train_dir": relative_artifact(out_dir),
    }
    if trained.stopped:
        progress.log(
            job_id, f"stopped at step {trained.steps}; the checkpoint in {out_dir} is kept"
        )
        raise progress.JobCancelled(result=result)
    if trained.best_checkpoint is None:
        raise RuntimeError("training kept no best checkpoint")
    weights = build_weights_dir(job, trained.best_checkpoint, init.tokenizer_dir)
    version = register_version(job, weights)
    result["metric_version"] = version.pk
    result["weights_dir"] = relative_artifact(weights)
    progress.log(job_id, f"registered {version} (metric version #{version.pk})")
    result.update(schedule_follow_ups(job, version))
    return result


def _short(values: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            return "{" + ", ".join(f"{k} {fmt(v)}" for k, v in value.items()) + "}"
        return str(value)

    return ", ".join(f"{k} {fmt(v)}" for k, v in values.items())


def _job_summary(job: Job) -> list[tuple[str, str, str]]:
    result = job.result or {}
    rows: list[tuple[str, str, str]] = []
    if "pairs" in result:
        counts = result["pairs"]
        rows.append(
            (
                "Pairs",
                f"train {counts.get('crafted_train', 0)} crafted + {counts.get('human_train', 0)} human; "
                f"validation {counts.get('crafted_val', 0)} crafted + {counts.get('human_val', 0)} human",
                "",
            )
        )
    if result.get("best_validation") or result.get("initial_validation"):
        before = ", ".join(
            f"{k} {v:.3f}" for k, v in (result.get("initial_validation") or {}).items()
        )
        best = ", ".join(f"{k} {v:.3f}" for k, v in (result.get("best_validation") or {}).items())
        rows.append(
            (
                "Validation accuracy",
                f"start: {before or '—'}; best (step {result.get('best_step')}): {best or '—'}",
                "",
            )
        )
    if result.get("metric_version"):
        version = MetricVersion.objects.filter(pk=result["metric_version"]).first()
        rows.append(
            ("New metric version", str(version or result["metric_version"]), reverse("metrics"))
        )
    if result.get("scoring_job"):
        rows.append(
            (
                "Scoring job",
                f"#{result['scoring_job']}",
                reverse("scoring-job", args=[result["scoring_job"]]),
            )
        )
        scoring = Job.objects.filter(pk=result["scoring_job"]).first()
        report_job = (scoring.result or {}).get("report_job") if scoring else None
        if report_job:
            from benchmark.models import Report

            report = Report.objects.filter(job_id=report_job).first()
            if report is not None:
                rows.append(("Report", report.title, reverse("report-detail", args=[report.pk])))
    return rows


register(
    LaunchKind(
        kind=Job.Kind.TRAIN_FACE_SCORE,
        title="Train Face Score",
        description="Fine-tune ImageReward (or a Face Score) on crafted and human face pairs; the result becomes a new metric version, scored and compared in a report.",
        form_class=TrainFaceScoreForm,
        run=run_train_job,
        queue="gpu",
        summary=_job_summary,
    )
)
