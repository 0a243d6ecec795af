"""DM fine-tuning jobs on a tiny SD 1.5 pipeline: a LoRA that loads, step records, DPO on human
judgments, cancel and resume, refusals."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from django.core.files.base import ContentFile
from PIL import Image
from rest_framework.test import APIClient

from annotator.assignment import claim_items, submit_judgment
from annotator.campaigns import create_campaign
from benchmark import launch
from benchmark.finetuning import run_finetune_job, tuned_model
from benchmark.models import FacePair
from benchmark.pairs import store_png
from jobs import progress
from jobs.models import Job, JobRecord
from ml.pairs import MaskSettings, face_mask
from ml.sd import load_pipeline
from tests.factories import make_dataset
from tests.images import astronaut, encode, grace_hopper
from tests.ml.tiny_sd import write_tiny_sd

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_sd(folder / "tiny-text2img")
    return folder


@pytest.fixture
def roots(tmp_path, settings, models_dir) -> Path:
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.FACEBENCH_INPUT_DIRS = [models_dir]
    settings.FACEBENCH_WEIGHTS_DIR.mkdir()
    return models_dir


def _pair_images(photo: np.ndarray, seed: int) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(good, bad, mask) at 96 px: the bad image has noise in the face ellipse only."""
    good = Image.fromarray(photo).resize((96, 96))
    box = (28.0, 16.0, 68.0, 60.0)
    mask = face_mask(good.size, box, MaskSettings(feather=0.0))
    noise = np.random.default_rng(seed).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    bad = Image.composite(Image.fromarray(noise), good, mask)
    return good, bad, mask


@pytest.fixture
def crafted(roots) -> Job:
    job = Job.objects.create(kind=Job.Kind.CRAFT_PAIRS, status=Job.Status.SUCCEEDED)
    for index, (photo, split) in enumerate(
        [(astronaut(), "train"), (grace_hopper(), "train"), (astronaut(), "val")]
    ):
        good, bad, mask = _pair_images(photo, index)
        FacePair.objects.create(
            crafting_job=job,
            source_key=f"file:{index}.png",
            face_index=0,
            box=[28, 16, 68, 60],
            seed=index,
            prompt="a photo of a face",
            good_image=store_png(good),
            bad_image=store_png(bad),
            mask_image=store_png(mask),
            split=split,
        )
    return job


def _data(models_dir: Path, **changes) -> dict:
    data = {
        "model": str(models_dir / "tiny-text2img"),
        "lora_rank": 4,
        "lr": 1e-3,
        "max_steps": 3,
        "batch_size": 2,
        "resolution": 64,
        "validation_prompts": ["a photo of a face"],
        "validation_steps": 2,
        "mixed_precision": "no",
    }
    data.update(changes)
    return data


def _launch(data: dict, user=None) -> Job:
    return launch.launch("finetune_dm", data, created_by=user, fill_defaults=True)


def _image(pipeline) -> np.ndarray:
    image = pipeline(
        "a photo of a face",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    return np.asarray(image)


def test_guidance_job_writes_a_lora_that_loads_and_a_record_per_step(roots, crafted, admin_user):
    job = _launch(_data(roots, crafting_jobs=[crafted.pk]), admin_user)
    assert job.config["train"]["objective"] == "guidance" and job.config["train"]["max_steps"] == 3
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error + job.log_tail
    assert job.result["pairs"] == {"crafted": 2, "human": 0}  # the training split only
    records = list(JobRecord.objects.filter(job=job).values_list("step", "values"))
    assert [step for step, _ in records] == [1, 2, 3]
    assert all(
        np.isfinite(values["loss"]) and "guidance_loss" in values and "lr" in values
        for _, values in records
    )
    assert job.progress_done == job.progress_total == 3
    output = job.artifact_dir / "finetune" / "lora" / "pytorch_lora_weights.safetensors"
    assert job.result["output"] == f"job-{job.pk}/finetune/lora/pytorch_lora_weights.safetensors"
    assert output.is_file() and job.result["output_kind"] == "lora"
    (validation,) = job.result["validation_images"]
    assert (Path(job.artifact_dir.parent) / validation).is_file()
    # the LoRA loads with load_lora_weights (through ml.sd) and changes what the model draws
    paths = tuned_model(job)
    assert paths == {
        "model": str(roots / "tiny-text2img"),
        "model_config": None,
        "lora": str(output),
    }
    base = load_pipeline(paths["model"], task="text2img", device="cpu")
    tuned = load_pipeline(paths["model"], task="text2img", device="cpu", lora=paths["lora"])
    assert any(tuned.get_list_adapters().values())
    assert not np.array_equal(_image(base), _image(tuned))
    summary = launch.get_kind("finetune_dm").summary(job)
    links = {label: url for label, _, url in summary}
    assert (
        links["LoRA weights"]
        == f"/jobs/{job.pk}/artifacts/finetune/lora/pytorch_lora_weights.safetensors"
    )


def test_dpo_trains_on_human_pairwise_judgments_as_whole_image_pairs(roots, annotator):
    dataset = make_dataset(models=("sd15", "rv51"))
    for generation, photo in zip(
        dataset.generations.order_by("id"), [astronaut(), grace_hopper()] * 2, strict=True
    ):
        generation.image.storage.save(generation.image.name, ContentFile(encode(photo)))
    campaign = create_campaign(
        name="pairs", protocol="pairwise", datasets=[dataset], annotators=[annotator], overlap_k=1
    )
    while claimed := claim_items(campaign=campaign, annotator=annotator).assignments:
        submit_judgment(
            annotator=annotator,
            item_id=claimed[0].item_id,
            idempotency_key=uuid.uuid4(),
            choice="left",
        )
    job = _launch(_data(roots, objective="dpo", campaigns=[campaign.pk], max_steps=2))
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    assert job.status == Job.Status.SUCCEEDED, job.error + job.log_tail
    assert job.result["pairs"] == {"crafted": 0, "human": 2} and job.result["objective"] == "dpo"
    first = JobRecord.objects.get(job=job, step=1).values
    assert first["loss"] == pytest.approx(np.log(2), abs=1e-6)  # the LoRA starts as a no-op


def test_cancel_keeps_a_checkpoint_and_a_redelivered_job_resumes_from_it(
    roots, crafted, monkeypatch
):
    monkeypatch.setattr(progress, "CANCEL_CHECK_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "RECORD_FLUSH_EVERY_S", 0.0)
    job = _launch(_data(roots, crafting_jobs=[crafted.pk], validation_prompts=[]))
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)

    def cancel_after_the_first_step(step: int, total: int) -> None:
        if step >= 1:
            progress.request_cancel(job.pk)

    with pytest.raises(progress.JobCancelled) as stop:
        run_finetune_job(job.pk, observer=cancel_after_the_first_step)
    assert stop.value.result["steps"] == 1 and stop.value.result["output"] is None
    assert stop.value.result["checkpoint"] == f"job-{job.pk}/finetune/checkpoints/checkpoint-1"
    first_loss = JobRecord.objects.get(job=job, step=1).values["loss"]
    Job.objects.filter(pk=job.pk).update(cancel_requested=False)
    result = run_finetune_job(job.pk)
    assert result["steps"] == 3 and result["output"] is not None
    assert list(JobRecord.objects.filter(job=job).values_list("step", flat=True)) == [1, 2, 3]
    assert JobRecord.objects.get(job=job, step=1).values["loss"] == first_loss


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"model": "/etc"}, "model", "outside the folders"),
        ({"objective": "sgd"}, "objective", "valid choice"),
        ({"lr": -1}, "lr", "positive"),
        ({"snr_gamma": -5}, "snr_gamma", "≥ 0"),
        ({"crafting_jobs": []}, "crafting_jobs", "Choose pair crafting jobs"),
        ({"campaigns": "CAMPAIGN"}, "campaigns", "dpo objective"),
    ],
)
def test_bad_settings_are_refused_next_to_their_field_and_create_nothing(
    roots, crafted, changes, field, words
):
    if changes.get("campaigns") == "CAMPAIGN":
        campaign = create_campaign(name="c", protocol="pairwise", datasets=[])
        changes = {"campaigns": [campaign.pk]}
    data = _data(roots, **{"crafting_jobs": [crafted.pk], **changes})
    with pytest.raises(launch.LaunchInvalid) as refused:
        _launch(data)
    errors = refused.value.form.errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert not Job.objects.exclude(pk=crafted.pk).exists()


def test_only_admins_launch_fine_tuning(roots, crafted, researcher):
    client = APIClient()
    client.force_authenticate(researcher)
    response = client.post(
        "/api/launch/finetune_dm/", _data(roots, crafting_jobs=[crafted.pk]), format="json"
    )
    assert response.status_code == 403
    assert not Job.objects.exclude(pk=crafted.pk).exists()


def test_the_launch_pages_of_the_dm_kinds_give_every_setting_a_help_text_and_demo_defaults(
    admin_user,
):
    from django.test import Client

    client = Client()
    client.force_login(admin_user)
    for kind in ("generate", "finetune_dm", "evaluate_dm"):
        form = launch.get_kind(kind).form_class()
        assert all(field.help_text for field in form.fields.values()), [
            name for name, field in form.fields.items() if not field.help_text
        ]
        assert client.get(f"/launch/{kind}/").status_code == 200
    defaults = launch.get_kind("finetune_dm").form_class.defaults()
    assert (defaults["lora_rank"], defaults["lr"], defaults["resolution"]) == (16, 1e-4, 512)
    assert (defaults["guidance_weight"], defaults["snr_gamma"], defaults["dpo_beta"]) == (
        1.0,
        5.0,
        5000.0,
    )
    assert defaults["objective"] == "guidance" and defaults["max_steps"] == 200
