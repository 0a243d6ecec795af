"""DM fine-tuning jobs: a text-to-image model tuned on face pairs (guidance loss or Diffusion-DPO).

Launched by an admin (``benchmark.launch``: page, API, ``manage.py finetune_dm``); the body runs on
the GPU queue. Steps of ``run_finetune_job``:

1. Pairs. Crafted pairs (``FacePair`` rows of craft_pairs jobs: the good image, the bad image
   that differs from it only inside the face mask, the mask, the prompt), by default their
   training split; and, for DPO only, human pairwise judgments (the chosen face's whole image
   against the other's, centre-cropped to the training resolution, mask = the whole image: two
   different pictures, so the guidance loss, which needs pairs that differ only in the face,
   does not take them). Images are read from the storage when the trainer asks for them, so a
   job never holds every pair in memory.
2. ``ml.train.diffusion.finetune`` under ``FACEBENCH_ARTIFACTS_DIR/job-<id>/finetune``: latents
   cached, LoRA or full UNet, checkpoints (a redelivered job resumes from the newest), fixed-seed
   validation images. Each step record (loss, its parts, lr, grad norm) becomes a ``JobRecord``
   (the job page draws the loss curve); cancel stops after the current step and keeps a
   checkpoint.
3. The result lists the artifacts: the LoRA safetensors file (``load_lora_weights``) or the
   diffusers folder, the validation images, the newest checkpoint. The evaluation job takes the
   job id and finds its output there.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, overload

from django import forms
from django.db.models import QuerySet
from django.urls import reverse
from PIL import Image, ImageOps

from annotator.models import Campaign, Face
from benchmark.generation import check_text2img_model
from benchmark.launch import (
    LaunchForm,
    LaunchKind,
    LinesField,
    ServerPathField,
    check_input_path,
    register,
    relative_artifact,
)
from benchmark.models import FacePair
from jobs import progress
from jobs.models import Job
from ml.prompts import HUMAN_PROMPTS
from ml.train.diffusion import (
    LR_SCHEDULES,
    MIXED_PRECISION,
    OBJECTIVES,
    FinetuneConfig,
    FinetunePair,
)

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
SPLIT_TRAIN, SPLIT_ALL = "train", "all"
LOG_KEYS = (
    "loss",
    "standard_loss",
    "guidance_loss",
    "model_mse",
    "implicit_accuracy",
    "lr",
    "grad_norm",
)

FINETUNE_HELP: dict[str, dict[str, str]] = {
    "train": {
        "lora_rank": "Rank of the LoRA on the UNet's attention projections; 0 trains the full UNet.",
        "lr": "Peak learning rate of AdamW (1e-4 suits LoRA; about 1e-5 for the full UNet).",
        "lr_warmup_steps": "Linear warmup steps.",
        "batch_size": "Pairs per micro-batch.",
        "accumulation": "Micro-batches per optimizer step (effective batch = batch size × this).",
        "weight_decay": "AdamW weight decay.",
        "grad_clip": "Clip the gradient norm to this (0 = no clipping).",
        "guidance_weight": "λ: weight of the face guidance term beside the standard loss on good images.",
        "snr_gamma": "γ of the min-SNR weight w(t) of the guidance term (0 turns the weight off).",
        "dpo_beta": "β of Diffusion-DPO (5000 is the Diffusion-DPO paper's value for SD 1.5 and SDXL).",
        "ema_decay": "EMA of the trained weights (0 = off); the output then holds the averaged weights.",
        "gradient_checkpointing": "Trade compute for memory (big models, big batches).",
        "compile": "torch.compile the UNet (CUDA only): minutes of compiling up front, faster steps after; for long runs.",
        "seed": "Seed of the LoRA initialisation, the pair order, timesteps and noise.",
        "validation_every": "Draw the validation images every this many steps (0: only at the end).",
        "validation_seed": "Seed of the validation images (the same at every validation).",
        "validation_steps": "Denoising steps of the validation images.",
        "validation_guidance": "Guidance scale of the validation images.",
        "resolution": "Training resolution: images are centre-cropped to a square of this side (512 for SD 1.5, 1024 for SDXL).",
    }
}


def crafting_jobs() -> QuerySet[Job]:
    return Job.objects.filter(
        kind=Job.Kind.CRAFT_PAIRS, status__in=[Job.Status.SUCCEEDED, Job.Status.CANCELLED]
    )


class FinetuneDMForm(LaunchForm):
    settings_classes = {"train": (FinetuneConfig, "")}
    settings_help = FINETUNE_HELP
    field_order = [
        "model",
        "model_config",
        "objective",
        "crafting_jobs",
        "pair_split",
        "campaigns",
        "pair_limit",
        "lora_rank",
        "lora_alpha",
        "lr",
        "lr_schedule",
        "max_steps",
        "batch_size",
        "accumulation",
        "guidance_weight",
        "snr_gamma",
        "dpo_beta",
        "resolution",
        "mixed_precision",
    ]

    model = ServerPathField(
        label="Model",
        help_text="The text-to-image model to tune (SD 1.5 family or SDXL): a diffusers folder or a single .safetensors/.ckpt file.",
    )
    model_config = ServerPathField(
        want="dir",
        required=False,
        label="Model config",
        help_text="For a single-file model: a diffusers folder of the same architecture whose configs are used.",
    )
    objective = forms.ChoiceField(
        choices=[
            ("guidance", "Face guidance loss: denoise the bad face toward the good one"),
            (
                "dpo",
                "Diffusion-DPO: prefer the good image over the bad one against the frozen model",
            ),
        ],
        initial="guidance",
        help_text="The training objective (DESIGN.md, 'Improving faces').",
    )
    crafting_jobs = forms.ModelMultipleChoiceField(
        queryset=crafting_jobs(),
        required=False,
        help_text="Pair crafting jobs whose (good, bad, mask) pairs train the model.",
    )
    pair_split = forms.ChoiceField(
        choices=[(SPLIT_TRAIN, "Their training split"), (SPLIT_ALL, "All their pairs")],
        initial=SPLIT_TRAIN,
        help_text="Which crafted pairs to use (the validation split was held out for Face Score).",
    )
    campaigns = forms.ModelMultipleChoiceField(
        queryset=Campaign.objects.filter(protocol=Campaign.Protocol.PAIRWISE),
        required=False,
        help_text="DPO only: pairwise campaigns whose left/right judgments become (chosen, rejected) whole-image pairs.",
    )
    pair_limit = forms.IntegerField(
        required=False,
        min_value=1,
        help_text="Use at most this many pairs (a quick run). Empty: all.",
    )
    # FinetuneConfig fields whose types the generic builder cannot tell, or whose defaults are
    # for a full run: a launch from the page should be a demo-sized run unless changed.
    lr_schedule = forms.ChoiceField(
        choices=[(c, c) for c in LR_SCHEDULES],
        initial="constant",
        help_text="Learning rate after the warmup.",
    )
    mixed_precision = forms.ChoiceField(
        choices=[(c, c) for c in MIXED_PRECISION],
        initial="bf16",
        help_text="bf16 autocast on CUDA with fp32 trainable weights, or 'no' (the CPU always runs fp32).",
    )
    lora_alpha = forms.IntegerField(
        required=False, min_value=1, help_text="LoRA alpha (empty: equal to the rank, scale 1)."
    )
    max_steps = forms.IntegerField(
        initial=200, min_value=1, help_text="Optimizer steps in all (200 is a demo-sized run)."
    )
    checkpoint_every = forms.IntegerField(
        initial=100, min_value=1, help_text="Save a resumable checkpoint every this many steps."
    )
    checkpoints_total_limit = forms.IntegerField(
        required=False,
        initial=3,
        min_value=1,
        help_text="Keep at most this many checkpoints (empty: 3).",
    )
    validation_prompts = LinesField(
        required=False,
        initial=HUMAN_PROMPTS[:2],
        help_text="One per line: images drawn with the tuned weights (fixed seeds) and kept as artifacts.",
    )

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("objective") not in OBJECTIVES:
            return cleaned  # the choice field already said why
        jobs = list(cleaned.get("crafting_jobs") or [])
        campaigns = list(cleaned.get("campaigns") or [])
        if campaigns and cleaned["objective"] != "dpo":
            self.add_error(
                "campaigns",
                "Human judgments compare two different images; the guidance loss needs pairs that "
                "differ only in the face. Use them with the dpo objective.",
            )
        elif not jobs and not campaigns:
            self.add_error("crafting_jobs", "Choose pair crafting jobs (or, for DPO, campaigns).")
        elif "crafting_jobs" not in self.errors and "campaigns" not in self.errors:
            n_crafted = _crafted(
                [j.pk for j in jobs], cleaned.get("pair_split") or SPLIT_TRAIN
            ).count()
            if n_crafted == 0 and not _human([c.pk for c in campaigns]):
                self.add_error(
                    "crafting_jobs", "These jobs and campaigns hold no pairs to train on."
                )
        if (
            cleaned.get("model")
            and "model" not in self.errors
            and "model_config" not in self.errors
        ):
            check_text2img_model(self, cleaned["model"], cleaned.get("model_config") or None)
            if "model" not in self.errors:
                from ml.sd import inspect_model

                info = inspect_model(cleaned["model"], config=cleaned.get("model_config") or None)
                if info["architecture"] not in ("sd15", "sdxl"):
                    self.add_error(
                        "model",
                        f"{cleaned['model']} is an {info['architecture']} model; fine-tuning supports "
                        "the SD 1.5 family (SD 1.5, Realistic Vision) and SDXL.",
                    )
        return cleaned


# --- pairs ----------------------------------------------------------------------------------


def _crafted(job_ids: Sequence[int], split: str) -> QuerySet[FacePair]:
    pairs = FacePair.objects.filter(crafting_job_id__in=job_ids)
    if split == SPLIT_TRAIN:
        pairs = pairs.filter(split=FacePair.Split.TRAIN)
    return pairs.order_by("id")


def _human(campaign_ids: Sequence[int]) -> list[Any]:
    from benchmark.training import human_pairs

    return human_pairs(campaign_ids) if campaign_ids else []


def _open(field: Any, mode: str = "RGB") -> Image.Image:
    with field.open("rb") as fh:
        return ImageOps.exif_transpose(Image.open(io.BytesIO(fh.read()))).convert(mode)


def _crafted_loader(pair: FacePair) -> Callable[[], FinetunePair]:
    def load() -> FinetunePair:
        return FinetunePair(
            good=_open(pair.good_image),
            bad=_open(pair.bad_image),
            mask=_open(pair.mask_image, "L"),
            prompt=pair.prompt,
        )

    return load


def _human_loader(good: Face, bad: Face, resolution: int) -> Callable[[], FinetunePair]:
    from ml.train.latents import square_crop

    def load() -> FinetunePair:
        # two different pictures: the same square crop the trainer takes, so that sizes agree
        chosen = square_crop(_open(good.generation.image), resolution, Image.Resampling.BICUBIC)
        rejected = square_crop(_open(bad.generation.image), resolution, Image.Resampling.BICUBIC)
        return FinetunePair(
            good=chosen,
            bad=rejected,
            mask=Image.new("L", chosen.size, 255),
            prompt=good.generation.prompt,
        )

    return load


class LazyFinetunePairs(Sequence[FinetunePair]):
    """Pairs read from the storage when indexed (the trainer encodes them once and caches the
    latents), so a job never holds every full-size image in memory."""

    def __init__(self, loaders: Sequence[Callable[[], FinetunePair]]) -> None:
        self._loaders = list(loaders)

    def __len__(self) -> int:
        return len(self._loaders)

    @overload
    def __getitem__(self, index: int) -> FinetunePair: ...
    @overload
    def __getitem__(self, index: slice) -> LazyFinetunePairs: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return LazyFinetunePairs(self._loaders[index])
        return self._loaders[index]()


def finetune_pairs(
    config: dict[str, Any], resolution: int
) -> tuple[LazyFinetunePairs, dict[str, int]]:
    """The job's training pairs (crafted first, then human) and how many of each."""
    crafted = list(
        _crafted(config.get("crafting_jobs") or [], config.get("pair_split") or SPLIT_TRAIN)
    )
    loaders = [_crafted_loader(pair) for pair in crafted]
    humans = _human(config.get("campaigns") or [])
    faces = Face.objects.select_related("generation").in_bulk(
        {f for h in humans for f in (h.good_face_id, h.bad_face_id)}
    )
    loaders += [
        _human_loader(faces[h.good_face_id], faces[h.bad_face_id], resolution) for h in humans
    ]
    limit = config.get("pair_limit")
    if limit:
        loaders = loaders[:limit]
    counts = {
        "crafted": min(len(crafted), len(loaders)),
        "human": max(0, len(loaders) - len(crafted)),
    }
    return LazyFinetunePairs(loaders), counts


# --- the job body ---------------------------------------------------------------------------


Observer = Callable[[int, int], None]


def run_finetune_job(job_id: int, *, observer: Observer | None = None) -> dict[str, Any]:
    """Body of a fine-tuning job (module docstring); ``observer(step, max_steps)`` mirrors the
    progress written to the job (``manage.py finetune_dm`` draws a tqdm bar with it)."""
    from benchmark.scoring import worker_device
    from ml.sd import describe_model
    from ml.train.diffusion import finetune

    job = Job.objects.get(pk=job_id)
    config = job.config
    train = FinetuneConfig.from_dict(config["train"])
    model_config = config.get("model_config") or None
    check_input_path(config["model"])  # the allowed roots may have changed since the launch
    pairs, counts = finetune_pairs(config, train.resolution)
    if len(pairs) == 0:
        raise ValueError("no pairs to train on: the crafting jobs and campaigns have none")
    progress.set_total(job_id, train.max_steps)
    progress.log(
        job_id,
        f"{train.objective} on {len(pairs)} pairs ({counts['crafted']} crafted, {counts['human']} "
        f"human), {'LoRA rank ' + str(train.lora_rank) if train.lora_rank else 'full UNet'}, "
        f"{train.max_steps} steps",
    )

    def flushed(step: int) -> None:
        Job.objects.filter(pk=job_id).update(progress_done=step)
        if observer is not None:
            observer(step, train.max_steps)

    recorder = progress.StepRecorder(job_id, on_flush=flushed)
    last_log = [time.monotonic()]

    def on_step(record: dict[str, Any]) -> None:
        recorder(record)
        if time.monotonic() - last_log[0] >= LOG_EVERY_S or record["step"] == train.max_steps:
            last_log[0] = time.monotonic()
            shown = ", ".join(
                f"{k} {record[k]:.4g}" for k in LOG_KEYS if isinstance(record.get(k), float)
            )
            progress.log(job_id, f"step {record['step']}: {shown}")

    out_dir = job.artifact_dir / "finetune"
    device = worker_device()
    description = describe_model(config["model"], config=model_config)
    started = time.perf_counter()
    try:
        trained = finetune(
            model_path=config["model"],
            pairs=pairs,
            config=train,
            out_dir=out_dir,
            device=device,
            on_step=on_step,
            should_stop=progress.CancelCheck(job_id),
            config_dir=model_config,
        )
    finally:
        recorder.flush()
    history = trained.history
    result: dict[str, Any] = {
        "objective": train.objective,
        "steps": history[-1]["step"] if history else 0,
        "final_loss": history[-1].get("loss") if history else None,
        "pairs": counts,
        "model": description,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 2),
        "output": relative_artifact(trained.output) if trained.output else None,
        "output_kind": trained.output_kind,
        "validation_images": [relative_artifact(p) for p in trained.validation_images],
        "checkpoint": relative_artifact(trained.checkpoint) if trained.checkpoint else None,
    }
    if trained.stopped:
        progress.log(
            job_id, f"stopped at step {result['steps']}; checkpoint {result['checkpoint']}"
        )
        raise progress.JobCancelled(result=result)
    progress.log(job_id, f"wrote {result['output']} ({trained.output_kind})")
    return result


def tuned_model(job: Job) -> dict[str, str | None]:
    """What a finished fine-tuning job made, as paths: ``{"model", "model_config", "lora"}`` —
    the base model with the LoRA, or the tuned diffusers folder alone."""
    from jobs.models import artifact_path

    result = job.result or {}
    if (
        job.kind != Job.Kind.FINETUNE_DM
        or job.status != Job.Status.SUCCEEDED
        or not result.get("output")
    ):
        raise ValueError(f"job #{job.pk} is not a finished fine-tuning job with an output")
    output = str(artifact_path(result["output"]))
    if result.get("output_kind") == "lora":
        return {
            "model": job.config["model"],
            "model_config": job.config.get("model_config") or None,
            "lora": output,
        }
    return {"model": output, "model_config": None, "lora": None}


def _artifact_link(job: Job, relative: str) -> str:
    """The job page's download URL of an artifact stored relative to FACEBENCH_ARTIFACTS_DIR."""
    inside = Path(relative).relative_to(f"job-{job.pk}").as_posix()
    return reverse("job-artifact", args=[job.pk, inside])


def _job_summary(job: Job) -> list[tuple[str, str, str]]:
    result = job.result or {}
    rows: list[tuple[str, str, str]] = []
    if "pairs" in result:
        counts = result["pairs"]
        rows.append(
            (
                "Pairs",
                f"{counts.get('crafted', 0)} crafted + {counts.get('human', 0)} human ({result.get('objective')})",
                "",
            )
        )
    if result.get("steps"):
        loss = result.get("final_loss")
        rows.append(
            (
                "Steps",
                f"{result['steps']}" + (f", last loss {loss:.4g}" if loss is not None else ""),
                "",
            )
        )
    if result.get("output"):
        kind = "LoRA weights" if result.get("output_kind") == "lora" else "Diffusers folder"
        url = _artifact_link(job, result["output"]) if result.get("output_kind") == "lora" else ""
        rows.append((kind, result["output"], url))
        rows.append(
            (
                "Evaluate it",
                f"launch an evaluation with tuned job #{job.pk}",
                reverse("launch-kind", args=[Job.Kind.EVALUATE_DM]),
            )
        )
    elif result.get("checkpoint"):
        rows.append(("Checkpoint", result["checkpoint"], ""))
    for relative in result.get("validation_images") or []:
        rows.append(("Validation image", Path(relative).name, _artifact_link(job, relative)))
    return rows


register(
    LaunchKind(
        kind=Job.Kind.FINETUNE_DM,
        title="Fine-tune a DM",
        description="Tune an SD 1.5-family or SDXL model on crafted face pairs with the face guidance loss or Diffusion-DPO (LoRA or full UNet); the output feeds an evaluation.",
        form_class=FinetuneDMForm,
        run=run_finetune_job,
        queue="gpu",
        summary=_job_summary,
    )
)
