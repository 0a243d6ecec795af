"""Generation jobs: prompts × seeds through one text-to-image DM into a dataset, faces detected.

Launched by an admin (``benchmark.launch``: page, API, ``manage.py launch generate``); the body
runs on the GPU queue. Steps of ``run_generate_job``:

1. Resolve the dataset (created on first use) and describe the model (weights sha256, LoRA).
2. Refuse to mix: generations of the dataset that carry the same DM labels (model name and
   version) must come from the same weights and sampler settings, else the labels would name two
   different things in the benchmark.
3. Skip the (prompt, seed) requests whose generation with these labels already exists (a rerun
   or a redelivered task does only what is missing).
4. Load the pipeline once (optional LoRA) and generate the rest in batches, each image from its
   own seeded generator. Batches are cut from the whole request list, so a rerun regenerates a
   partly stored batch whole (same batch, same bytes) and stores only what is missing.
   Each image is stored like an imported one (PNG, content-addressed by
   sha256, one image once per dataset) as a ``Generation`` with its provenance: model path and
   sha256, LoRA, seed, sampler settings, prompt, source "generated", job id.
5. Detect faces in the new generations (in this worker, so they are ready for campaigns and
   scoring when the job ends).
6. Progress is images done / total (img/s and ETA on the job page); cancel stops between
   batches, keeps what was stored and detects faces in it.

``generate_into_dataset`` (steps 1–4) is also what the evaluation job calls for its base and
tuned models.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django import forms
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.urls import reverse
from PIL import Image

from annotator.models import Dataset, Generation
from benchmark.launch import LaunchForm, LaunchKind, ServerPathField, check_input_path, register
from jobs import progress
from jobs.models import Job
from ml.generate import GenerateSettings
from ml.prompts import GENERAL_PROMPTS, HUMAN_PROMPTS, read_prompt_file, split_prompts

logger = logging.getLogger(__name__)

MAX_REQUESTS = 100_000
MAX_SEED = 2**63 - 1  # Generation.seed is a signed 64-bit integer
LOG_EVERY_S = 30.0
# The sampler settings that change an image; a DM label means one value of each.
IDENTITY_SETTINGS = ("steps", "guidance", "width", "height", "negative_prompt")

PROMPT_SETS: dict[str, str] = {
    "human": "Built-in human-centric prompts (all of them)",
    "human_train": "Built-in human prompts: the training split",
    "human_held_out": "Built-in human prompts: the held-out split",
    "general": "Built-in prompts without people (general ability)",
    "text": "The prompts typed or pasted below",
}
PROMPT_FORMATS = (("txt", "one prompt per line"), ("jsonl", "JSON lines"), ("csv", "CSV"))

GENERATE_HELP: dict[str, dict[str, str]] = {
    "settings": {
        "steps": "Denoising steps per image.",
        "guidance": "Classifier-free guidance scale.",
        "width": "Image width in pixels (a multiple of 8; 512 for SD 1.5, 1024 for SDXL).",
        "height": "Image height in pixels (a multiple of 8).",
        "negative_prompt": "Negative prompt for every image (empty: none).",
        "batch_size": "Images per pipeline call on the GPU.",
    }
}


# --- prompts and seeds (shared with the evaluation job) -------------------------------------


def resolve_prompts(
    source: str,
    *,
    text: str = "",
    text_format: str = "txt",
    held_out_fraction: float = 0.2,
    split_seed: int = 0,
    limit: int | None = None,
) -> list[str]:
    """The prompts of a prompt set; ``ValueError`` naming the line for bad typed prompts."""
    if source == "text":
        prompts = read_prompt_file(text.encode("utf-8"), f"prompts.{text_format}")
    elif source == "general":
        prompts = list(GENERAL_PROMPTS)
    elif source in ("human_train", "human_held_out"):
        train, held_out = split_prompts(HUMAN_PROMPTS, held_out_fraction, split_seed)
        prompts = train if source == "human_train" else held_out
    elif source == "human":
        prompts = list(HUMAN_PROMPTS)
    else:
        raise ValueError(f"unknown prompt set {source!r}; known: {', '.join(PROMPT_SETS)}")
    prompts = list(dict.fromkeys(prompts))  # a repeated prompt would only repeat its images
    return prompts[:limit] if limit else prompts


def parse_seeds(count: int | None, listed: str) -> list[int]:
    """``listed`` ("0, 7, 42") when given, else seeds 0 … count − 1; ``ValueError`` otherwise."""
    text = (listed or "").replace(",", " ").split()
    if text:
        seeds = []
        for word in text:
            if not word.isdigit() or int(word) > MAX_SEED:
                raise ValueError(f"{word!r} is not a seed (a whole number from 0 to 2**63 − 1)")
            seeds.append(int(word))
        return list(dict.fromkeys(seeds))
    if not count or count < 1:
        raise ValueError("give a number of seeds (at least 1) or a list of seeds")
    return list(range(count))


class PromptFieldsMixin(forms.Form):
    """Prompt set and seed fields of the generation and evaluation forms."""

    prompt_source = forms.ChoiceField(
        choices=list(PROMPT_SETS.items()),
        initial="human",
        help_text="Which prompts to draw. The built-in human set is split into training and held-out prompts by the fraction and seed below.",
    )
    prompt_text = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="With 'the prompts typed below': one per line (txt), JSON lines with a \"prompt\" field (jsonl), or CSV with a prompt column.",
    )
    prompt_format = forms.ChoiceField(
        choices=PROMPT_FORMATS, initial="txt", help_text="The format of the typed prompts."
    )
    held_out_fraction = forms.FloatField(
        initial=0.2,
        min_value=0.0,
        max_value=0.9,
        help_text="Share of the built-in human prompts held out from training.",
    )
    split_seed = forms.IntegerField(
        initial=0, min_value=0, help_text="Seed of the training / held-out split."
    )
    prompt_limit = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="Use only the first this many prompts of the set (a quick run). Empty: all.",
    )
    seed_count = forms.IntegerField(
        initial=1,
        min_value=1,
        max_value=10_000,
        required=False,
        help_text="Images per prompt, with seeds 0, 1, …",
    )
    seed_list = forms.CharField(
        required=False,
        help_text="Exact seeds instead, separated by commas or spaces (e.g. 0, 7, 42).",
    )

    def clean_prompts_and_seeds(self, cleaned: dict[str, Any]) -> None:
        """Put ``prompts`` and ``seeds`` (resolved lists) into ``cleaned``, or add errors."""
        if "prompt_source" in cleaned:
            if (
                cleaned["prompt_source"] == "text"
                and not (cleaned.get("prompt_text") or "").strip()
            ):
                self.add_error("prompt_text", "Type or paste the prompts.")
            else:
                try:
                    cleaned["prompts"] = resolve_prompts(
                        cleaned["prompt_source"],
                        text=cleaned.get("prompt_text") or "",
                        text_format=cleaned.get("prompt_format") or "txt",
                        held_out_fraction=cleaned.get("held_out_fraction") or 0.0,
                        split_seed=cleaned.get("split_seed") or 0,
                        limit=cleaned.get("prompt_limit"),
                    )
                except ValueError as exc:
                    field_name = "prompt_text" if cleaned["prompt_source"] == "text" else None
                    self.add_error(field_name, str(exc))
        try:
            cleaned["seeds"] = parse_seeds(
                cleaned.get("seed_count"), cleaned.get("seed_list") or ""
            )
        except ValueError as exc:
            self.add_error("seed_list", str(exc))


def check_text2img_model(form: forms.Form, model: str, config: str | None) -> None:
    """Form check: a text-to-image model (4-channel UNet), single files with their config."""
    from ml.sd import ModelUnavailable, inspect_model

    if Path(model).is_file() and not config:
        form.add_error(
            "model_config",
            "A single-file model needs a config folder: a diffusers folder of the same architecture.",
        )
        return
    try:
        info = inspect_model(model, config=config)
    except (ModelUnavailable, OSError, ValueError) as exc:
        form.add_error("model", str(exc))
        return
    if info["in_channels"] != 4:
        form.add_error(
            "model",
            f"{model} is an inpainting model ({info['in_channels']} UNet input channels); "
            "generation needs a text-to-image model (4).",
        )


def default_model_name(model: str) -> str:
    path = Path(model)
    return (path.name if path.is_dir() else path.stem)[:200]


# --- the form --------------------------------------------------------------------------------


class GenerateForm(PromptFieldsMixin, LaunchForm):
    settings_classes = {"settings": (GenerateSettings, "")}
    settings_help = GENERATE_HELP
    field_order = [
        "model",
        "model_config",
        "lora",
        "model_name",
        "model_version",
        "dataset_name",
        "prompt_source",
        "prompt_text",
        "prompt_format",
        "held_out_fraction",
        "split_seed",
        "prompt_limit",
        "seed_count",
        "seed_list",
        "detector",
    ]

    model = ServerPathField(
        label="Model",
        help_text="A text-to-image diffusers folder (SD 1.5, Realistic Vision, SDXL) or a single .safetensors/.ckpt file, under the weights dir or FACEBENCH_INPUT_DIRS.",
    )
    model_config = ServerPathField(
        want="dir",
        required=False,
        label="Model config",
        help_text="For a single-file model: a diffusers folder of the same architecture whose configs are used.",
    )
    lora = ServerPathField(
        required=False,
        label="LoRA",
        help_text="Optional LoRA weights (a .safetensors file or a folder holding pytorch_lora_weights.safetensors), e.g. a fine-tuning job's output.",
    )
    model_name = forms.CharField(
        required=False,
        max_length=200,
        help_text="The DM's name in the benchmark (default: the model's folder or file name).",
    )
    model_version = forms.CharField(
        required=False,
        max_length=200,
        help_text="The DM's version label (default: 'lora:<file>' with a LoRA, else empty).",
    )
    dataset_name = forms.CharField(
        max_length=200,
        initial="generated",
        help_text="The dataset the images go to; it is created when it does not exist yet.",
    )
    detector = forms.CharField(
        initial="auto",
        help_text="Face detector run on the new images: auto (RetinaFace when its weights are present, else Haar), haar, …",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self.clean_prompts_and_seeds(cleaned)
        if cleaned.get("prompts") and cleaned.get("seeds"):
            total = len(cleaned["prompts"]) * len(cleaned["seeds"])
            if total > MAX_REQUESTS:
                self.add_error(
                    "seed_count",
                    f"{total} images is more than one job makes ({MAX_REQUESTS}); split it.",
                )
        if (
            cleaned.get("model")
            and "model" not in self.errors
            and "model_config" not in self.errors
        ):
            check_text2img_model(self, cleaned["model"], cleaned.get("model_config") or None)
        if cleaned.get("model") and not cleaned.get("model_name"):
            cleaned["model_name"] = default_model_name(cleaned["model"])
        if cleaned.get("lora") and not cleaned.get("model_version"):
            cleaned["model_version"] = f"lora:{default_model_name(cleaned['lora'])}"[:200]
        check_detector(self, cleaned.get("detector") or "auto")
        return cleaned


def check_detector(form: forms.Form, name: str) -> None:
    from annotator.detection import resolve_detector_name
    from ml.faces import list_detectors

    if name != "auto" and resolve_detector_name(name) not in list_detectors():
        form.add_error(
            "detector", f"Unknown detector {name!r}; known: auto, {', '.join(list_detectors())}."
        )


# --- generating into a dataset ---------------------------------------------------------------


@dataclass
class GenerationRun:
    """One model generating into one dataset under one pair of DM labels."""

    dataset: Dataset
    model: str
    model_name: str
    settings: GenerateSettings
    job_id: int
    model_version: str = ""
    model_config: str | None = None
    lora: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more provenance for every generation


@dataclass
class GenerationOutcome:
    ids: dict[tuple[str, int], int]  # (prompt, seed) → generation id, for every request done
    generated: int = 0
    already_there: int = 0
    identical: int = 0  # new images whose bytes an earlier generation of the dataset has
    recomputed: int = 0  # existing images generated again to keep their batch whole
    stopped: bool = False
    seconds: float = 0.0
    new_ids: list[int] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float | None:
        return round(self.generated / self.seconds, 3) if self.seconds and self.generated else None


def _identity(description: dict[str, Any], settings: GenerateSettings) -> dict[str, Any]:
    values = settings.to_dict()
    return {
        "model_sha256": description["sha256"],
        "lora_sha256": (description.get("lora") or {}).get("sha256", ""),
        **{name: values[name] for name in IDENTITY_SETTINGS},
    }


def _existing(run: GenerationRun, identity: dict[str, Any]) -> dict[tuple[str, int], int]:
    """This run's labels' generations already in the dataset; refuses other weights or settings
    under the same labels (a ``ValueError`` the job page shows)."""
    rows = Generation.objects.filter(
        dataset=run.dataset, model_name=run.model_name, model_version=run.model_version
    ).values_list("id", "prompt", "seed", "extra")
    found: dict[tuple[str, int], int] = {}
    for pk, prompt, seed, extra in rows:
        theirs = (extra or {}).get("identity")
        if theirs and theirs != identity:
            changed = sorted(k for k in identity if theirs.get(k) != identity[k])
            label = f"{run.model_name} {run.model_version}".strip()
            raise ValueError(
                f"dataset {run.dataset.name!r} already holds generations labelled {label!r} made "
                f"with other {', '.join(changed)}; give this model another name or version"
            )
        if seed is not None:
            found[(prompt, int(seed))] = pk
    return found


def store_generation(
    run: GenerationRun,
    *,
    prompt: str,
    seed: int,
    image: Image.Image,
    sampler: dict[str, Any],
    extra: dict[str, Any],
) -> tuple[int, bool]:
    """Store one image as the importer does (PNG named by its sha256, one per dataset);
    ``(generation id, True)`` for a new row, ``(id of the same bytes, False)`` when the dataset
    already holds this exact image."""
    rgb = image.convert("RGB")
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG")
    data = buffer.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    same = Generation.objects.filter(dataset=run.dataset, sha256=sha256).values_list(
        "id", flat=True
    )
    if same:
        return same[0], False
    generation = Generation(
        dataset=run.dataset,
        sha256=sha256,
        width=rgb.width,
        height=rgb.height,
        original_filename=f"job-{run.job_id}/seed-{seed}-{sha256[:12]}.png",
        prompt=prompt,
        model_name=run.model_name,
        model_version=run.model_version,
        seed=seed,
        sampler=sampler,
        extra=extra,
        source=Generation.Source.GENERATED,
    )
    # the file first, so a row never points at a missing file (as annotator.imports does)
    generation.image.save(f"{sha256}.png", ContentFile(data), save=False)
    generation.width, generation.height = rgb.width, rgb.height
    try:
        with transaction.atomic():
            generation.save()
    except IntegrityError:
        generation.image.delete(save=False)
        same = Generation.objects.filter(dataset=run.dataset, sha256=sha256).values_list(
            "id", flat=True
        )
        if not same:
            raise
        return same[0], False  # the same image stored concurrently
    return generation.pk, True


def generate_into_dataset(
    run: GenerationRun,
    requests: Sequence[tuple[str, int]],
    *,
    on_progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
) -> GenerationOutcome:
    """Generate what of ``requests`` is missing under the run's labels (module docstring, steps
    1–4). ``on_progress(n)`` gets the number of requests done (skipped ones included)."""
    from benchmark.scoring import worker_device
    from ml.generate import generate
    from ml.sd import describe_model, load_pipeline

    check_input_path(run.model)
    if run.lora:
        check_input_path(run.lora)
    description = describe_model(run.model, config=run.model_config, lora=run.lora)
    identity = _identity(description, run.settings)
    existing = _existing(run, identity)
    requests = list(dict.fromkeys(requests))
    outcome = GenerationOutcome(ids={}, model=description)
    todo = []
    for request in requests:
        if request in existing:
            outcome.ids[request] = existing[request]
        else:
            todo.append(request)
    outcome.already_there = len(requests) - len(todo)
    if on_progress is not None:
        on_progress(outcome.already_there)
    if not todo:
        return outcome
    device = worker_device()
    pipeline = load_pipeline(
        run.model, task="text2img", device=device, lora=run.lora, config=run.model_config
    )
    sampler = {**run.settings.to_dict(), "scheduler": type(pipeline.scheduler).__name__}
    provenance = {
        **run.extra,
        "job": run.job_id,
        "model_path": description["path"],
        "model_sha256": description["sha256"],
        "architecture": description["architecture"],
        "model_config": run.model_config or "",
        "lora_path": (description.get("lora") or {}).get("path", ""),
        "lora_sha256": identity["lora_sha256"],
        "device": str(device),
        "identity": identity,
    }
    if log is not None:
        label = f"{run.model_name} {run.model_version}".strip()
        log(
            f"generating {len(todo)} images as {label!r} on {device} ({outcome.already_there} already there)"
        )
    started = time.perf_counter()
    last_log = time.monotonic()
    size = run.settings.batch_size
    try:
        for start in range(0, len(requests), size):
            # A batch is generated whole even when some of its images exist: batched kernels
            # may round differently for another batch, and a rerun must give the same bytes.
            batch = requests[start : start + size]
            if all(request in outcome.ids for request in batch):
                continue
            if should_stop is not None and should_stop():
                break
            for prompt, seed, image in generate(pipeline, batch, run.settings):
                if (prompt, seed) in outcome.ids:
                    outcome.recomputed += 1
                    continue
                pk, new = store_generation(
                    run, prompt=prompt, seed=seed, image=image, sampler=sampler, extra=provenance
                )
                outcome.ids[(prompt, seed)] = pk
                if new:
                    outcome.generated += 1
                    outcome.new_ids.append(pk)
                else:
                    outcome.identical += 1
            if on_progress is not None:
                on_progress(len(outcome.ids))
            if log is not None and time.monotonic() - last_log >= LOG_EVERY_S:
                last_log = time.monotonic()
                rate = outcome.generated / (time.perf_counter() - started)
                log(f"{outcome.generated} of {len(todo)} images ({rate:.2f} img/s)")
    finally:
        del pipeline
        free_accelerator_memory()
    outcome.seconds = round(time.perf_counter() - started, 3)
    outcome.stopped = len(outcome.ids) < len(requests)
    return outcome


def free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the job body -----------------------------------------------------------------------------


Observer = Callable[[int, int], None]


def run_generate_job(job_id: int, *, observer: Observer | None = None) -> dict[str, Any]:
    """Body of a generation job (module docstring); ``observer(done, total)`` mirrors progress."""
    from annotator.detection import detect_faces_for_generations

    job = Job.objects.get(pk=job_id)
    config = job.config
    settings = GenerateSettings.from_dict(config["settings"])
    requests = [(prompt, seed) for prompt in config["prompts"] for seed in config["seeds"]]
    total = len(requests)
    progress.set_total(job_id, total)
    dataset, created = Dataset.objects.get_or_create(
        name=config["dataset_name"],
        defaults={
            "created_by": job.created_by,
            "description": f"Made by generation job #{job_id}.",
        },
    )
    progress.log(
        job_id,
        f"{len(config['prompts'])} prompts × {len(config['seeds'])} seeds into "
        f"{'new ' if created else ''}dataset {dataset.name!r}",
    )

    def report(done: int) -> None:
        Job.objects.filter(pk=job_id).update(progress_done=done)
        if observer is not None:
            observer(done, total)

    run = GenerationRun(
        dataset=dataset,
        model=config["model"],
        model_config=config.get("model_config") or None,
        lora=config.get("lora") or None,
        model_name=config["model_name"],
        model_version=config.get("model_version") or "",
        settings=settings,
        job_id=job_id,
        extra={"prompt_source": config.get("prompt_source", "")},
    )
    outcome = generate_into_dataset(
        run,
        requests,
        on_progress=report,
        should_stop=progress.CancelCheck(job_id),
        log=lambda line: progress.log(job_id, line),
    )
    # faces of everything this run stored, and of earlier images never detected (a run
    # cancelled or killed between generating and detecting)
    undetected = list(
        Generation.objects.filter(
            pk__in=outcome.ids.values(), faces_detected_at__isnull=True
        ).values_list("id", flat=True)
    )
    faces = detect_faces_for_generations(
        generation_ids=undetected, detector_name=config.get("detector") or "auto"
    )
    progress.log(
        job_id,
        f"{faces['faces']} faces in {faces['generations']} new images "
        f"({faces['no_face']} without a face) by {faces['detector']}",
    )
    result = {
        "dataset": dataset.pk,
        "dataset_name": dataset.name,
        "requested": total,
        "generated": outcome.generated,
        "already_there": outcome.already_there,
        "identical_images": outcome.identical,
        "faces": faces["faces"],
        "images_without_face": faces["no_face"],
        "detector": faces["detector"],
        "images_per_s": outcome.images_per_s,
        "seconds": outcome.seconds,
        "model": outcome.model,
        "labels": {"model_name": run.model_name, "model_version": run.model_version},
    }
    if outcome.stopped:
        raise progress.JobCancelled(result=result)
    return result


def _job_summary(job: Job) -> list[tuple[str, str, str]]:
    result = job.result or {}
    if "dataset" not in result:
        return []
    label = " ".join(v for v in (result.get("labels") or {}).values() if v)
    rows = [
        (
            "Dataset",
            result.get("dataset_name", ""),
            reverse("dataset-detail", args=[result["dataset"]]),
        ),
        (
            "Images",
            f"{result.get('generated', 0)} new as {label!r}, {result.get('already_there', 0)} already there"
            + (
                f", {result['identical_images']} identical to earlier ones"
                if result.get("identical_images")
                else ""
            ),
            "",
        ),
        (
            "Faces",
            f"{result.get('faces', 0)} detected by {result.get('detector', '')}; "
            f"{result.get('images_without_face', 0)} new images without a face",
            "",
        ),
    ]
    if result.get("images_per_s"):
        rows.append(("Speed", f"{result['images_per_s']} images/s", ""))
    return rows


register(
    LaunchKind(
        kind=Job.Kind.GENERATE,
        title="Generate images",
        description="Generate a prompt set × seeds with a text-to-image DM (optionally with a LoRA) into a dataset, with full provenance; faces are detected so the images are ready for campaigns and scoring.",
        form_class=GenerateForm,
        run=run_generate_job,
        queue="gpu",
        summary=_job_summary,
    )
)
