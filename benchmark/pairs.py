"""Pair crafting jobs: (good, bad) face pairs from good images, stored as ``FacePair`` rows.

Launched by an admin (``benchmark.launch``: page, API, ``manage.py craft_pairs``); the body runs
on the GPU queue. Steps of ``run_craft_job``:

1. Sources. Either a dataset's generations, with their stored faces (optionally only faces whose
   mean human rating is at least ``min_human_rating``, or whose current Face Score is at least
   ``min_face_score``), or a server-side folder of photos, whose faces are detected here.
2. Skip the sources whose every face already has a pair in this job (a redelivered or resumed
   job), then plan: faces under the confidence or size limits are skipped and counted.
3. Load the inpainting pipeline once; craft the pairs a chunk of sources at a time (the images of
   one chunk are all that is held in memory), batched on the GPU, each pair from its own seed.
4. Optionally keep only the pairs whose current Face Score prefers the good face by
   ``min_margin``; store FS(good) and FS(bad) with them.
5. Store each pair (good, bad and mask as content-addressed PNGs through the storage API) with
   its provenance, upserting on (job, source, face): a rerun replaces, never duplicates. A whole
   source goes to the validation split or not, by a hash of (seed, source key), so faces of one
   image never sit on both sides.
6. Progress (faces done / total, pairs/s, ETA), a log line per chunk, cancel between batches.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django import forms
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import Avg, OuterRef, QuerySet, Subquery
from PIL import Image, ImageOps

from annotator.models import Dataset, Face, Generation, Judgment
from benchmark.launch import LaunchForm, LaunchKind, ServerPathField, check_input_path, register
from benchmark.models import FacePair, MetricVersion, Score
from jobs import progress
from jobs.models import Job
from ml.pairs import CraftedPair, CraftSettings, PairSource, craft_pairs, margin_filter, plan_pairs

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_FOLDER_IMAGES = 200_000
# Faces per chunk of sources: the images of one chunk are held in memory together.
CHUNK_FACES = 64
SOURCE_DATASET, SOURCE_FOLDER = "dataset", "folder"

CRAFT_HELP: dict[str, dict[str, str]] = {
    "settings": {
        "strength": "How much of the face the model repaints (1 = from pure noise).",
        "steps": "Denoising steps of the inpainting pipeline.",
        "guidance": "Classifier-free guidance scale.",
        "prompt_source": "'source': each image's own prompt (photos use the prompt below); 'fixed': always the prompt below.",
        "prompt": "Inpainting prompt when there is no source prompt, or always with 'fixed'.",
        "negative_prompt": "Negative prompt (empty: none).",
        "seed": "Base seed; each pair's seed is derived from it, its source and its face index.",
        "resolution": "Side the context crop around a face is resized to (512 for SD 1.5, 1024 for SDXL).",
        "batch_size": "Faces inpainted together on the GPU.",
        "min_confidence": "Skip faces the detector is less sure of than this.",
        "context": "Side of the crop the model sees, as a multiple of the face size.",
        "mask.shape": "Mask the face as an ellipse or as its box.",
        "mask.margin": "Grow the face box by this fraction of its size on each side.",
        "mask.feather": "Soft edge of the mask, as a fraction of the face size (0 = hard).",
        "mask.min_face_px": "Skip faces whose shorter side is under this many pixels.",
    }
}


def face_score_versions() -> QuerySet[MetricVersion]:
    return MetricVersion.objects.filter(metric="face_score").order_by("-id")


class CraftPairsForm(LaunchForm):
    settings_classes = {"settings": (CraftSettings, "")}
    settings_help = CRAFT_HELP
    field_order = [
        "source",
        "dataset",
        "min_human_rating",
        "min_face_score",
        "face_score_version",
        "folder",
        "detector",
        "model",
        "model_config",
        "limit",
        "val_fraction",
        "min_margin",
    ]

    source = forms.ChoiceField(
        choices=[
            (SOURCE_DATASET, "Generations of a dataset"),
            (SOURCE_FOLDER, "A folder of photos on the server"),
        ],
        initial=SOURCE_DATASET,
        help_text="Where the good images come from.",
    )
    dataset = forms.ModelChoiceField(
        queryset=Dataset.objects.all(),
        required=False,
        help_text="With source 'dataset': its generations and their detected faces.",
    )
    min_human_rating = forms.FloatField(
        required=False,
        min_value=1,
        max_value=5,
        help_text="Only faces whose mean human rating (likert campaigns) is at least this. Empty: no filter.",
    )
    min_face_score = forms.FloatField(
        required=False,
        help_text="Only faces whose current Face Score is at least this. Empty: no filter.",
    )
    face_score_version = forms.ModelChoiceField(
        queryset=face_score_versions(),
        required=False,
        help_text="The Face Score version for that filter (default: the newest with scores).",
    )
    folder = ServerPathField(
        want="dir",
        required=False,
        label="Folder",
        help_text="With source 'folder': a folder of face photos under the weights dir or FACEBENCH_INPUT_DIRS; faces are detected.",
    )
    detector = forms.CharField(
        initial="auto",
        help_text="Face detector for folders: auto (RetinaFace when its weights are present, else Haar), haar, …",
    )
    model = ServerPathField(
        label="Inpainting model",
        help_text="A diffusers inpainting folder (SD 1.5 / Realistic Vision inpainting) or a single .safetensors/.ckpt file.",
    )
    model_config = ServerPathField(
        want="dir",
        required=False,
        label="Model config",
        help_text="For a single-file model: a diffusers folder of the same architecture whose configs are used.",
    )
    limit = forms.IntegerField(
        required=False, min_value=1, help_text="Craft at most this many faces. Empty: all."
    )
    val_fraction = forms.FloatField(
        initial=0.1,
        min_value=0.0,
        max_value=0.9,
        help_text="Share of source images held out for validation (chosen by a hash of seed and source).",
    )
    min_margin = forms.FloatField(
        required=False,
        help_text="Keep only pairs where the current Face Score prefers the good face by at least this. Empty: keep all.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        source = cleaned.get("source")
        if source == SOURCE_DATASET and not cleaned.get("dataset"):
            self.add_error("dataset", "Choose the dataset whose generations are the good images.")
        if source == SOURCE_FOLDER and not cleaned.get("folder"):
            self.add_error("folder", "Give the folder of photos.")
        if source == SOURCE_FOLDER:
            from annotator.detection import resolve_detector_name
            from ml.faces import list_detectors

            name = cleaned.get("detector") or "auto"
            if name != "auto" and resolve_detector_name(name) not in list_detectors():
                self.add_error(
                    "detector",
                    f"Unknown detector {name!r}; known: auto, {', '.join(list_detectors())}.",
                )
        if cleaned.get("min_face_score") is not None and not cleaned.get("face_score_version"):
            version = face_score_versions().filter(scores__value__isnull=False).distinct().first()
            if version is None:
                self.add_error(
                    "min_face_score",
                    "No Face Score version has scores yet: score the dataset first.",
                )
            else:
                cleaned["face_score_version"] = version
        if cleaned.get("min_margin") is not None:
            from ml import metrics as metric_zoo

            missing = metric_zoo.missing_files("face_score", settings.FACEBENCH_WEIGHTS_DIR)
            if missing:
                self.add_error(
                    "min_margin",
                    f"The margin filter needs the Face Score weights: {', '.join(map(str, missing))}.",
                )
        if cleaned.get("model") and "model" not in self.errors:
            self._check_model(cleaned["model"], cleaned.get("model_config") or None)
        return cleaned

    def _check_model(self, model: str, config: str | None) -> None:
        from ml.sd import ModelUnavailable, inspect_model

        try:
            info = inspect_model(model, config=config)
        except (ModelUnavailable, OSError, ValueError) as exc:
            self.add_error("model", str(exc))
            return
        if info["in_channels"] != 9:
            self.add_error(
                "model",
                f"{model} is a text-to-image model ({info['in_channels']} UNet input channels); pair crafting needs an inpainting model (9).",
            )


# --- sources -------------------------------------------------------------------------------


@dataclass
class SourceRef:
    """A good image before it is loaded: where it is, its faces and what they came from."""

    key: str
    load: Callable[[], Image.Image]
    faces: list[tuple[tuple[float, float, float, float], float]]
    prompt: str = ""
    generation_id: int | None = None
    face_ids: list[int] = field(default_factory=list)
    detector: str = ""


def _open_rgb(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    if image.width * image.height > settings.FACEBENCH_MAX_IMAGE_PIXELS:
        raise ValueError(f"{image.width}×{image.height} is over FACEBENCH_MAX_IMAGE_PIXELS")
    return ImageOps.exif_transpose(image).convert("RGB")


def _generation_loader(generation: Generation) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with generation.image.open("rb") as fh:
            return _open_rgb(fh.read())

    return load


def candidate_faces(config: dict[str, Any]) -> QuerySet[Face]:
    """The dataset's faces that pass the job's filters, in a stable order."""
    faces = Face.objects.filter(generation__dataset_id=config["dataset"]).select_related(
        "generation"
    )
    if config.get("min_human_rating") is not None:
        mean_rating = (
            Judgment.objects.filter(
                item__face=OuterRef("pk"), item__is_gold=False, rating__isnull=False
            )
            .values("item__face")
            .annotate(mean=Avg("rating"))
            .values("mean")
        )
        faces = faces.annotate(human_mean=Subquery(mean_rating)).filter(
            human_mean__gte=config["min_human_rating"]
        )
    if config.get("min_face_score") is not None and config.get("face_score_version"):
        score = Score.objects.filter(
            face=OuterRef("pk"), metric_version_id=config["face_score_version"]
        ).values("value")[:1]
        faces = faces.annotate(current_fs=Subquery(score)).filter(
            current_fs__gte=config["min_face_score"]
        )
    return faces.order_by("generation_id", "id")


def dataset_sources(config: dict[str, Any]) -> list[SourceRef]:
    """One source per generation that has candidate faces; face index = position among them."""
    refs: dict[int, SourceRef] = {}
    for face in candidate_faces(config):
        generation = face.generation
        ref = refs.get(generation.pk)
        if ref is None:
            ref = refs[generation.pk] = SourceRef(
                key=f"generation:{generation.pk}",
                load=_generation_loader(generation),
                faces=[],
                prompt=generation.prompt,
                generation_id=generation.pk,
            )
        ref.faces.append((face.box, float(face.confidence)))
        ref.face_ids.append(face.pk)
        ref.detector = face.detector
    return list(refs.values())


def folder_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted); files whose real path leaves the
    allowed folders (symlinks out) are left out."""
    root = folder.resolve()
    files = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        try:
            check_input_path(str(path), want="file")
        except forms.ValidationError:
            logger.warning("skipping %s: it resolves outside the allowed folders", path)
            continue
        files.append(path)
        if len(files) >= MAX_FOLDER_IMAGES:
            break
    return files


def _file_loader(path: Path) -> Callable[[], Image.Image]:
    return lambda: _open_rgb(path.read_bytes())


def folder_sources(config: dict[str, Any]) -> tuple[list[SourceRef], int]:
    """Sources from the photos of a folder, faces detected now; and how many were unreadable."""
    from annotator.detection import get_detector, resolve_detector_name

    folder = check_input_path(config["folder"], want="dir")
    detector = get_detector(config.get("detector") or "auto")
    detector_name = resolve_detector_name(config.get("detector") or "auto")
    refs, unreadable = [], 0
    for path in folder_images(folder):
        try:
            image = _open_rgb(path.read_bytes())
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            logger.warning("skipping unreadable %s: %s", path, exc)
            unreadable += 1
            continue
        (detections,) = detector.detect([np.asarray(image)])
        refs.append(
            SourceRef(
                key=f"file:{path.relative_to(folder).as_posix()}",
                load=_file_loader(path),
                faces=[(d.box, float(d.confidence)) for d in detections],
                detector=detector_name,
            )
        )
    return refs, unreadable


# --- storing pairs -------------------------------------------------------------------------


def store_png(image: Image.Image) -> str:
    """Save ``image`` as a PNG named by its sha256 (the same pixels are stored once); its name."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    name = f"pairs/{digest[:2]}/{digest}.png"
    if not default_storage.exists(name):
        name = default_storage.save(name, ContentFile(data))
    return name


def split_of(seed: int, source_key: str, val_fraction: float) -> str:
    """train or val for a whole source, by a hash of (seed, key): the same on every run."""
    digest = hashlib.sha256(f"split:{seed}:{source_key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return FacePair.Split.VAL if position < val_fraction else FacePair.Split.TRAIN


def _pair_row(
    job_id: int,
    pair: CraftedPair,
    ref: SourceRef,
    *,
    fs: tuple[float | None, float | None],
    split: str,
    provenance: dict[str, Any],
) -> FacePair:
    face_id = ref.face_ids[pair.face_index] if ref.face_ids else None
    return FacePair(
        crafting_job_id=job_id,
        source_key=pair.source_key,
        face_index=pair.face_index,
        source_generation_id=ref.generation_id,
        source_face_id=face_id,
        box=[float(v) for v in pair.box],
        prompt=pair.prompt,
        seed=pair.seed,
        good_image=store_png(pair.good),
        bad_image=store_png(pair.bad),
        mask_image=store_png(pair.mask),
        fs_good=fs[0],
        fs_bad=fs[1],
        split=split,
        provenance={
            **provenance,
            **pair.provenance(),
            "detector": ref.detector,
            "source_face": face_id,
            "source_generation": ref.generation_id,
        },
    )


def upsert_pairs(rows: Sequence[FacePair]) -> None:
    FacePair.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["crafting_job", "source_key", "face_index"],
        update_fields=[
            "source_generation",
            "source_face",
            "box",
            "prompt",
            "seed",
            "good_image",
            "bad_image",
            "mask_image",
            "fs_good",
            "fs_bad",
            "split",
            "provenance",
        ],
    )


# --- the job body --------------------------------------------------------------------------


def _chunks(refs: Sequence[SourceRef], faces_per_chunk: int) -> Iterator[list[SourceRef]]:
    chunk: list[SourceRef] = []
    n_faces = 0
    for ref in refs:
        chunk.append(ref)
        n_faces += len(ref.faces)
        if n_faces >= faces_per_chunk:
            yield chunk
            chunk, n_faces = [], 0
    if chunk:
        yield chunk


def _limit(refs: list[SourceRef], limit: int | None) -> list[SourceRef]:
    if not limit:
        return refs
    kept, n = [], 0
    for ref in refs:
        if n >= limit:
            break
        take = min(len(ref.faces), limit - n)
        ref.faces, ref.face_ids = ref.faces[:take], ref.face_ids[:take]
        kept.append(ref)
        n += take
    return kept


def _face_score_scorer() -> Callable[[list[Image.Image]], list[float]]:
    from benchmark.scoring import loaded_metric

    metric = loaded_metric("face_score")
    return lambda crops: [float(v) for v in metric.score(crops).tolist()]


Observer = Callable[[int, int], None]


def run_craft_job(job_id: int, *, observer: Observer | None = None) -> dict[str, Any]:
    """Body of a crafting job (see the module docstring); ``observer(done, total)`` mirrors the
    progress written to the job (``manage.py craft_pairs`` draws a tqdm bar with it)."""
    from benchmark.scoring import worker_device
    from ml.sd import describe_model, load_pipeline

    job = Job.objects.get(pk=job_id)
    config = job.config
    craft = CraftSettings.from_dict(config["settings"])
    model_config = config.get("model_config") or None
    check_input_path(craft.model)  # the allowed roots may have changed since the launch
    unreadable = 0
    if config["source"] == SOURCE_FOLDER:
        progress.log(job_id, f"detecting faces in {config['folder']}")
        refs, unreadable = folder_sources(config)
    else:
        refs = dataset_sources(config)
    refs = _limit(refs, config.get("limit"))
    total = sum(len(ref.faces) for ref in refs)
    done_keys = set(
        FacePair.objects.filter(crafting_job_id=job_id).values_list("source_key", "face_index")
    )
    todo = [
        ref for ref in refs if not all((ref.key, i) in done_keys for i in range(len(ref.faces)))
    ]
    already = total - sum(len(ref.faces) for ref in todo)
    progress.set_total(job_id, total)
    progress.log(
        job_id,
        f"{len(refs)} source images, {total} faces"
        + (f", {already} already crafted" if already else "")
        + (f", {unreadable} unreadable files" if unreadable else ""),
    )

    def report(done: int) -> None:
        Job.objects.filter(pk=job_id).update(progress_done=done)
        if observer is not None:
            observer(done, total)

    report(already)
    should_stop = progress.CancelCheck(job_id)
    device = worker_device()
    description = describe_model(craft.model, config=model_config)
    provenance = {
        "model": description,
        "settings": craft.to_dict(),
        "base_seed": craft.seed,
        "job": job_id,
    }
    scorer = _face_score_scorer() if config.get("min_margin") is not None else None
    skipped = {"no_face": 0, "low_confidence": 0, "small_face": 0}
    counts = {"crafted": 0, "kept": 0, "filtered_by_margin": 0}
    done = already
    started = time.perf_counter()
    pipeline = (
        load_pipeline(craft.model, task="inpaint", device=device, config=model_config)
        if todo
        else None
    )
    progress.log(job_id, f"inpainting with {craft.model} on {device}")
    try:
        for index, chunk in enumerate(_chunks(todo, max(CHUNK_FACES, craft.batch_size))):
            if should_stop():
                break
            by_key = {ref.key: ref for ref in chunk}
            sources = [
                PairSource(key=r.key, image=r.load(), faces=r.faces, prompt=r.prompt) for r in chunk
            ]
            tasks, chunk_skipped = plan_pairs(sources, craft)
            for reason, n in chunk_skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
            base = done

            def on_progress(crafted: int, _total: int, base: int = base) -> None:
                report(base + crafted)

            def counted(pairs: Iterator[CraftedPair]) -> Iterator[CraftedPair]:
                for pair in pairs:
                    counts["crafted"] += 1
                    yield pair

            pairs = counted(
                craft_pairs(
                    pipeline,
                    tasks,
                    craft,
                    on_progress=on_progress,
                    should_stop=should_stop,
                )
            )
            kept = (
                margin_filter(
                    pairs, scorer, float(config["min_margin"]), batch_size=craft.batch_size
                )
                if scorer is not None
                else ((pair, None, None) for pair in pairs)
            )
            rows = []
            for pair, fs_good, fs_bad in kept:
                ref = by_key[pair.source_key]
                split = split_of(
                    craft.seed, pair.source_key, float(config.get("val_fraction") or 0.0)
                )
                rows.append(
                    _pair_row(
                        job_id, pair, ref, fs=(fs_good, fs_bad), split=split, provenance=provenance
                    )
                )
                if len(rows) >= craft.batch_size:
                    upsert_pairs(rows)
                    counts["kept"] += len(rows)
                    rows = []
            if rows:
                upsert_pairs(rows)
                counts["kept"] += len(rows)
            stopped = should_stop()
            if stopped:
                break
            done = base + sum(len(r.faces) for r in chunk)
            report(done)
            seconds = time.perf_counter() - started
            progress.log(
                job_id,
                f"chunk {index}: {len(tasks)} faces inpainted, "
                f"{sum(chunk_skipped.values())} skipped, {counts['kept']} pairs kept so far "
                f"({counts['crafted'] / seconds if seconds else 0:.2f} pairs/s)",
            )
    finally:
        del pipeline
        _free_accelerator_memory()
    counts["filtered_by_margin"] = counts["crafted"] - counts["kept"] if scorer is not None else 0
    result = summary(job_id) | {
        "faces": total,
        "already_done": already,
        "crafted": counts["crafted"],
        "filtered_by_margin": counts["filtered_by_margin"],
        "skipped": skipped,
        "unreadable": unreadable,
        "model_sha256": description["sha256"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if should_stop():
        raise progress.JobCancelled(result=result)
    return result


def _free_accelerator_memory() -> None:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def summary(job_id: int) -> dict[str, int]:
    pairs = FacePair.objects.filter(crafting_job_id=job_id)
    return {
        "pairs": pairs.count(),
        "train": pairs.filter(split=FacePair.Split.TRAIN).count(),
        "val": pairs.filter(split=FacePair.Split.VAL).count(),
    }


def _job_summary(job: Job) -> list[tuple[str, str, str]]:
    result = job.result or {}
    if not result:
        return []
    rows = [
        (
            "Pairs",
            f"{result.get('pairs', 0)} ({result.get('train', 0)} train, {result.get('val', 0)} validation)",
            "",
        ),
        (
            "Faces",
            f"{result.get('faces', 0)} ({result.get('already_done', 0)} already crafted)",
            "",
        ),
    ]
    skipped = result.get("skipped") or {}
    if any(skipped.values()):
        rows.append(
            (
                "Skipped",
                ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in skipped.items() if v),
                "",
            )
        )
    if result.get("filtered_by_margin"):
        rows.append(("Dropped by the Face Score margin", str(result["filtered_by_margin"]), ""))
    return rows


register(
    LaunchKind(
        kind=Job.Kind.CRAFT_PAIRS,
        title="Craft face pairs",
        description="Inpaint the faces of good images to make (good, bad) pairs for Face Score training and DM fine-tuning.",
        form_class=CraftPairsForm,
        run=run_craft_job,
        queue="gpu",
        summary=_job_summary,
    )
)
