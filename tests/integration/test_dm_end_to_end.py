"""Improving a DM end to end on tiny models built offline, through the commands, in process:
generate (``manage.py generate``) → craft face pairs from those generations (``craft_pairs``)
→ fine-tune the DM on them with the guidance loss (``finetune_dm``) → evaluate base against
tuned on held-out prompts with tiny Face Score and ImageReward weights (``evaluate_dm``) → a
report with paired differences, and the one-click base-vs-tuned campaign.

The tiny random SD draws no real faces, so generation and evaluation use a detector that finds
two fixed faces in every image (registered by the evaluation tests); everything else is the
production code path.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.management import call_command

from annotator.models import Face, Generation
from benchmark.evaluation import create_evaluation_campaign
from benchmark.models import FacePair, Score
from jobs.models import Job, JobRecord
from ml.prompts import HUMAN_PROMPTS, split_prompts
from ml.sd import load_pipeline
from tests.benchmark.test_evaluate_dm_job import DETECTOR
from tests.ml.tiny_models import write_tiny_face_score, write_tiny_imagereward
from tests.ml.tiny_sd import write_tiny_sd

pytestmark = [pytest.mark.django_db, pytest.mark.slow]

TINY = {"steps": 2, "width": 64, "height": 64, "batch_size": 2}


def _command(name: str, **values: object) -> Job:
    args: list[str] = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    call_command(name, *args, stdout=io.StringIO(), stderr=io.StringIO())
    job = Job.objects.order_by("-id").first()
    assert job is not None and job.status == Job.Status.SUCCEEDED, (job.error, job.log_tail)
    return job


def test_generate_craft_finetune_evaluate_produces_a_report_and_a_campaign(
    tmp_path, settings, admin_user
):
    weights = tmp_path / "weights"
    settings.FACEBENCH_WEIGHTS_DIR, settings.FACEBENCH_ARTIFACTS_DIR = (
        weights,
        tmp_path / "artifacts",
    )
    write_tiny_sd(weights / "tiny-text2img")
    write_tiny_sd(weights / "tiny-inpaint", inpaint=True)
    write_tiny_face_score(weights)
    write_tiny_imagereward(weights)

    # 1. the training prompts of the built-in split, with the DM to tune
    generated = _command(
        "generate",
        model="tiny-text2img",
        prompt_source="human_train",
        prompt_limit=3,
        seed_count=1,
        dataset_name="train-images",
        detector=DETECTOR,
        **TINY,
    )
    train_prompts = split_prompts(HUMAN_PROMPTS, 0.2, 0)[0][:3]
    assert sorted(Generation.objects.values_list("prompt", flat=True)) == sorted(train_prompts)
    assert Face.objects.count() == 6 and generated.result["generated"] == 3

    # 2. (good, bad) pairs: the big face of each generation inpainted (the small one is skipped)
    crafted = _command(
        "craft_pairs",
        source="dataset",
        dataset=generated.result["dataset"],
        model="tiny-inpaint",
        steps=2,
        resolution=64,
        batch_size=2,
        min_confidence=0.9,
        mask__min_face_px=16,
        val_fraction=0.0,
    )
    pairs = list(FacePair.objects.filter(crafting_job=crafted))
    assert len(pairs) == 3 and {p.prompt for p in pairs} == set(train_prompts)

    # 3. the guidance loss on those pairs, a LoRA out
    tuned = _command(
        "finetune_dm",
        model="tiny-text2img",
        crafting_jobs=f"[{crafted.pk}]",
        lora_rank=4,
        lr=1e-3,
        max_steps=3,
        batch_size=2,
        resolution=64,
        validation_prompts='["a photo of a face"]',
        validation_steps=2,
    )
    assert tuned.result["output_kind"] == "lora" and tuned.result["pairs"]["crafted"] == 3
    assert list(JobRecord.objects.filter(job=tuned).values_list("step", flat=True)) == [1, 2, 3]
    lora = settings.FACEBENCH_ARTIFACTS_DIR / tuned.result["output"]
    pipeline = load_pipeline(weights / "tiny-text2img", task="text2img", device="cpu", lora=lora)
    assert any(pipeline.get_list_adapters().values())

    # 4. base against tuned on held-out prompts, same seeds; HPS v2 has no weights here
    evaluation = _command(
        "evaluate_dm",
        tuned_job=tuned.pk,
        prompt_limit=2,
        seed_count=2,
        general_limit=1,
        metrics='["face_score", "imagereward", "hps_v2"]',
        n_boot=200,
        detector=DETECTOR,
        **TINY,
    )
    result = evaluation.result
    held_out = split_prompts(HUMAN_PROMPTS, 0.2, 0)[1][:2]
    assert evaluation.config["prompts"] == held_out and not set(held_out) & set(train_prompts)
    assert result["twins"] == {"human": 4, "general": 2}
    face_score, image_reward = result["human"]["face_score"], result["human"]["imagereward"]
    assert face_score["n_pairs"] == 4 and face_score["n_prompts"] == 2
    assert face_score["low"] <= face_score["difference"] <= face_score["high"]
    assert np.isfinite(image_reward["difference"]) and "imagereward" in result["general"]
    assert result["metrics"]["hps_v2"]["status"] == "skipped"
    assert Score.objects.filter(metric_version__metric="face_score").count() == 16

    # 5. one click: a pairwise campaign of base and tuned faces of the same prompt and seed
    campaign = create_evaluation_campaign(job=evaluation, created_by=admin_user)
    assert campaign.items.count() == 4
    for item in campaign.items.select_related("left_face__generation", "right_face__generation"):
        left, right = item.left_face.generation, item.right_face.generation
        assert (left.prompt, left.seed) == (right.prompt, right.seed)
        assert {left.model_name, right.model_name} == {"base", f"tuned:job-{tuned.pk}"}
