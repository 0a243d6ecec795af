"""Generation jobs on a tiny text-to-image pipeline: provenance, faces, reruns, cancel, refusals."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rest_framework.test import APIClient

from annotator.models import Dataset, Generation
from benchmark import launch
from benchmark.generation import run_generate_job
from jobs import progress
from jobs.models import Job
from ml.generate import GenerateSettings, generate
from ml.prompts import HUMAN_PROMPTS, split_prompts
from ml.sd import describe_model, load_pipeline
from tests.ml.tiny_sd import write_tiny_sd

pytestmark = pytest.mark.django_db

PROMPTS = "a photo of a face\na portrait of a man smiling"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_sd(folder / "tiny-text2img")
    write_tiny_sd(folder / "tiny-inpaint", inpaint=True)
    write_test_lora(folder / "tiny-text2img", folder / "lora", scale=0.5)
    write_test_lora(folder / "tiny-text2img", folder / "zero-lora", scale=0.0)
    return folder


def write_test_lora(model: Path, out: Path, *, scale: float) -> None:
    """A LoRA on the tiny UNet's attention, its B matrices random (``scale`` 0: a no-op)."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"])
    )
    torch.manual_seed(0)
    for name, parameter in unet.named_parameters():
        if "lora_B" in name:
            parameter.data.normal_(0.0, scale) if scale else parameter.data.zero_()
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=layers, safe_serialization=True)


@pytest.fixture
def roots(tmp_path, settings, models_dir) -> Path:
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.FACEBENCH_INPUT_DIRS = [models_dir]
    settings.FACEBENCH_WEIGHTS_DIR.mkdir()
    return models_dir


def _data(models_dir: Path, **changes) -> dict:
    data = {
        "model": str(models_dir / "tiny-text2img"),
        "prompt_source": "text",
        "prompt_text": PROMPTS,
        "seed_count": 2,
        "steps": 2,
        "width": 64,
        "height": 64,
        "batch_size": 2,
        "dataset_name": "gen",
        "detector": "haar",
    }
    data.update(changes)
    return data


def _launch(data: dict, user=None) -> Job:
    return launch.launch("generate", data, created_by=user, fill_defaults=True)


def _run(job: Job) -> Job:
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    return job


def _page(job: Job, user) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    response = client.get(f"/jobs/{job.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def _pixels(generation: Generation) -> np.ndarray:
    with generation.image.open("rb") as fh:
        return np.asarray(Image.open(io.BytesIO(fh.read())).convert("RGB"))


def test_generate_job_stores_every_image_with_provenance_and_detects_faces(
    roots, admin_user, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as sent:
        job = _launch(_data(roots), admin_user)
    assert len(sent) == 1 and job.config["seeds"] == [0, 1]
    assert (
        job.config["prompts"] == PROMPTS.splitlines()
        and job.config["model_name"] == "tiny-text2img"
    )
    job = _run(job)
    assert job.status == Job.Status.SUCCEEDED, job.error + job.log_tail
    generations = list(Generation.objects.order_by("prompt", "seed"))
    assert [(g.prompt, g.seed) for g in generations] == [
        (p, s) for p in sorted(PROMPTS.splitlines()) for s in (0, 1)
    ]
    model = describe_model(roots / "tiny-text2img")
    dataset = Dataset.objects.get(name="gen")
    for generation in generations:
        assert generation.dataset == dataset and generation.source == Generation.Source.GENERATED
        assert (generation.model_name, generation.model_version) == ("tiny-text2img", "")
        assert (generation.width, generation.height) == (64, 64)
        with generation.image.open("rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == generation.sha256
        assert (
            generation.image.name == f"generations/{generation.sha256[:2]}/{generation.sha256}.png"
        )
        assert generation.sampler["steps"] == 2 and generation.sampler["guidance"] == 7.5
        assert generation.sampler["scheduler"] == "DDIMScheduler"
        assert (
            generation.extra["job"] == job.pk
            and generation.extra["model_sha256"] == model["sha256"]
        )
        assert generation.extra["lora_path"] == "" and generation.extra["prompt_source"] == "text"
        assert generation.faces_detected_at is not None and generation.face_detector == "haar"
    assert job.result["generated"] == 4 and job.result["already_there"] == 0
    assert job.result["dataset"] == dataset.pk and job.result["detector"] == "haar"
    assert (job.progress_done, job.progress_total) == (4, 4)
    page = _page(job, admin_user)
    assert f'href="/datasets/{dataset.pk}/"' in page and "4 new as &#x27;tiny-text2img&#x27;" in page
    # the provenance is enough to make the images again, byte for byte (the same batches)
    first, second = generations[:2]
    pipeline = load_pipeline(first.extra["model_path"], task="text2img", device="cpu")
    settings = GenerateSettings.from_dict(
        {k: v for k, v in first.sampler.items() if k != "scheduler"}
    )
    again = list(generate(pipeline, [(g.prompt, g.seed) for g in (first, second)], settings))
    assert np.array_equal(np.asarray(again[0][2]), _pixels(first))
    assert np.array_equal(np.asarray(again[1][2]), _pixels(second))


def test_a_rerun_skips_what_exists_and_a_lost_image_is_made_again_identically(roots):
    job = _run(_launch(_data(roots)))
    before = dict(Generation.objects.values_list("pk", "sha256"))
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)  # as a redelivery finds it
    result = run_generate_job(job.pk)
    assert result["generated"] == 0 and result["already_there"] == 4
    assert dict(Generation.objects.values_list("pk", "sha256")) == before
    lost = Generation.objects.order_by("id").first()
    lost.delete()
    result = run_generate_job(job.pk)
    assert result["generated"] == 1 and result["already_there"] == 3
    assert sorted(Generation.objects.values_list("sha256", flat=True)) == sorted(before.values())
    # a second job with the same labels and more seeds makes only the new ones
    more = _run(_launch(_data(roots, seed_count=3)))
    assert more.result["generated"] == 2 and more.result["already_there"] == 4


def test_cancel_stops_between_batches_and_keeps_the_images_made(roots, monkeypatch):
    monkeypatch.setattr(progress, "CANCEL_CHECK_EVERY_S", 0.0)
    job = _launch(_data(roots))
    Job.objects.filter(pk=job.pk).update(status=Job.Status.RUNNING)

    def cancel_after_the_first_batch(done: int, total: int) -> None:
        if done >= 2:
            progress.request_cancel(job.pk)

    with pytest.raises(progress.JobCancelled) as stop:
        run_generate_job(job.pk, observer=cancel_after_the_first_batch)
    assert stop.value.result["generated"] == 2 == Generation.objects.count()
    assert not Generation.objects.filter(faces_detected_at__isnull=True).exists()


def test_a_lora_gets_its_own_label_and_provenance_and_a_no_op_lora_reuses_the_base_images(roots):
    base = _run(_launch(_data(roots)))
    tuned = _run(_launch(_data(roots, lora=str(roots / "lora"))))
    assert tuned.status == Job.Status.SUCCEEDED, tuned.error
    assert tuned.result["generated"] == 4 and tuned.config["model_version"] == "lora:lora"
    lora_rows = Generation.objects.filter(model_version="lora:lora")
    assert lora_rows.count() == 4
    lora_file = roots / "lora" / "pytorch_lora_weights.safetensors"
    assert all(g.extra["lora_path"] == str(lora_file) for g in lora_rows)
    assert all(
        g.extra["lora_sha256"] == hashlib.sha256(lora_file.read_bytes()).hexdigest()
        for g in lora_rows
    )
    base_images = {
        (g.prompt, g.seed): _pixels(g) for g in Generation.objects.filter(model_version="")
    }
    assert any(not np.array_equal(base_images[(g.prompt, g.seed)], _pixels(g)) for g in lora_rows)
    # a LoRA whose B matrices are zero draws exactly the base images: nothing new is stored
    zero = _run(_launch(_data(roots, lora=str(roots / "zero-lora"))))
    assert zero.status == Job.Status.SUCCEEDED, zero.error
    assert zero.result["generated"] == 0 and zero.result["identical_images"] == 4
    assert Generation.objects.count() == 8 and base.result["generated"] == 4


def test_other_settings_under_the_same_labels_are_refused(roots):
    _run(_launch(_data(roots)))
    other = _run(_launch(_data(roots, steps=3)))
    assert other.status == Job.Status.FAILED
    assert "steps" in other.error and "another name or version" in other.error
    assert Generation.objects.count() == 4


def test_the_built_in_held_out_split_is_what_ml_prompts_holds_out(roots):
    job = _launch(
        _data(
            roots,
            prompt_source="human_held_out",
            prompt_text="",
            held_out_fraction=0.2,
            split_seed=3,
        )
    )
    assert job.config["prompts"] == split_prompts(HUMAN_PROMPTS, 0.2, 3)[1]
    limited = _launch(
        _data(roots, prompt_source="human", prompt_text="", prompt_limit=3, seed_list="5, 9")
    )
    assert limited.config["prompts"] == HUMAN_PROMPTS[:3] and limited.config["seeds"] == [5, 9]


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"model": "/etc"}, "model", "outside the folders"),
        ({"model": "MODELS/tiny-inpaint"}, "model", "text-to-image model"),
        ({"lora": "/etc/passwd"}, "lora", "outside the folders"),
        (
            {"prompt_text": '{"prompt": "ok"}\nnot json', "prompt_format": "jsonl"},
            "prompt_text",
            "line 2",
        ),
        ({"prompt_text": ""}, "prompt_text", "Type or paste"),
        ({"seed_list": "1, x"}, "seed_list", "'x' is not a seed"),
        ({"steps": 0}, "steps", "steps"),
        ({"width": 65}, "width", "multiple of 8"),
        ({"detector": "nonsense"}, "detector", "Unknown detector"),
    ],
)
def test_bad_settings_are_refused_next_to_their_field_and_create_nothing(
    roots, changes, field, words
):
    changes = {
        k: v.replace("MODELS", str(roots)) if isinstance(v, str) else v for k, v in changes.items()
    }
    with pytest.raises(launch.LaunchInvalid) as refused:
        _launch(_data(roots, **changes))
    errors = refused.value.form.errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert not Job.objects.exists() and not Dataset.objects.exists()


def test_only_admins_launch_generation(roots, researcher):
    client = APIClient()
    client.force_authenticate(researcher)
    assert client.post("/api/launch/generate/", _data(roots), format="json").status_code == 403
    assert not Job.objects.exists()
