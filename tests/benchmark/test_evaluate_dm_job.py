"""DM evaluation jobs: base and tuned twins, scores, paired differences equal to a direct
computation, skipped metrics, reruns, the one-click base-vs-tuned campaign, refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from django.test import Client
from rest_framework.test import APIClient

from annotator.models import Campaign, Face, Generation
from benchmark import launch
from benchmark.evaluation import run_evaluate_job
from benchmark.models import MetricVersion, Score
from benchmark.stats.paired import paired_difference
from jobs.models import Job
from ml.faces import Detection, list_detectors, register_detector
from ml.prompts import GENERAL_PROMPTS
from tests.benchmark.test_generate_job import write_test_lora
from tests.ml.tiny_models import write_tiny_face_score, write_tiny_imagereward
from tests.ml.tiny_sd import write_tiny_sd

pytestmark = pytest.mark.django_db

PROMPTS = ["a photo of a face", "a portrait of a woman smiling"]
DETECTOR = "two-fixed-faces-eval"


class TwoFixedFaces:
    """The tiny random SD draws no faces a real detector finds: this one "finds" a big face and
    a small one in every image, so the face-level path has something to score."""

    name = DETECTOR

    def detect(self, images):
        return [[Detection(16, 12, 48, 52, 0.95), Detection(2, 2, 14, 14, 0.6)] for _ in images]


if DETECTOR not in list_detectors():
    register_detector(DETECTOR)(TwoFixedFaces)


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_tiny_sd(folder / "tiny-text2img")
    write_test_lora(folder / "tiny-text2img", folder / "lora", scale=0.5)
    return folder


@pytest.fixture
def roots(tmp_path, settings, models_dir) -> Path:
    settings.FACEBENCH_WEIGHTS_DIR = tmp_path / "weights"
    settings.FACEBENCH_ARTIFACTS_DIR = tmp_path / "artifacts"
    settings.FACEBENCH_INPUT_DIRS = [models_dir]
    write_tiny_face_score(settings.FACEBENCH_WEIGHTS_DIR)
    write_tiny_imagereward(settings.FACEBENCH_WEIGHTS_DIR)
    return models_dir


@pytest.fixture
def tuned_job(roots, settings) -> Job:
    """A finished fine-tuning job whose output is the test LoRA (its files where a job puts them)."""
    job = Job.objects.create(
        kind=Job.Kind.FINETUNE_DM,
        status=Job.Status.SUCCEEDED,
        config={"model": str(roots / "tiny-text2img")},
    )
    lora = job.artifact_dir / "finetune" / "lora"
    shutil.copytree(roots / "lora", lora)
    job.result = {
        "output": f"job-{job.pk}/finetune/lora/pytorch_lora_weights.safetensors",
        "output_kind": "lora",
    }
    job.save()
    return job


def _data(**changes) -> dict:
    data = {
        "prompt_source": "text",
        "prompt_text": "\n".join(PROMPTS),
        "seed_count": 2,
        "general_limit": 1,
        "steps": 2,
        "width": 64,
        "height": 64,
        "batch_size": 2,
        "metrics": ["face_score", "imagereward", "hps_v2", "sharpness"],
        "n_boot": 200,
        "detector": DETECTOR,
    }
    data.update(changes)
    return data


def _launch(data: dict, user=None) -> Job:
    return launch.launch("evaluate_dm", data, created_by=user, fill_defaults=True)


def _run(job: Job) -> Job:
    launch.run_launched_job(job.pk)
    job.refresh_from_db()
    return job


def _evaluate(tuned_job: Job, user=None, **changes) -> Job:
    job = _run(_launch(_data(tuned_job=tuned_job.pk, **changes), user))
    assert job.status == Job.Status.SUCCEEDED, job.error + job.log_tail
    return job


@pytest.fixture
def evaluated(tuned_job, admin_user) -> Job:
    return _evaluate(tuned_job, admin_user)


@pytest.fixture
def quickly_evaluated(tuned_job) -> Job:
    """One small metric and a weight-free one, no general prompts: for what follows a report."""
    return _evaluate(tuned_job, metrics=["imagereward", "sharpness"], general_prompts=False)


def _twins(job: Job, prompts: list[str]) -> list[tuple[str, Generation, Generation]]:
    rows = {
        (g.model_name, g.prompt, g.seed): g
        for g in Generation.objects.filter(dataset_id=job.result["dataset"])
    }
    tuned = job.config["tuned"]["label"]
    return [
        (prompt, rows[("base", prompt, seed)], rows[(tuned, prompt, seed)])
        for prompt in prompts
        for seed in job.config["seeds"]
    ]


def _value(metric: str, **target) -> float:
    score = Score.objects.get(metric_version__metric=metric, **target)
    return score.value


def test_paired_differences_equal_a_direct_computation_from_the_stored_scores(evaluated):
    job, result = evaluated, evaluated.result
    assert job.config["tuned"]["label"] == f"tuned:job-{job.config['tuned_job']}"
    assert job.config["general"] == GENERAL_PROMPTS[:1]
    twins = _twins(job, PROMPTS)
    assert len(twins) == 4 == result["twins"]["human"] and result["twins"]["general"] == 2
    for _, base, tuned in twins:  # same prompt and seed, other model, other pixels
        assert (base.prompt, base.seed) == (
            tuned.prompt,
            tuned.seed,
        ) and base.sha256 != tuned.sha256
        assert base.model_version == tuned.model_version == "tiny-text2img"
        assert base.faces.count() == tuned.faces.count() == 2
    # face level: the mean over each image's faces, then tuned − base per twin
    base_fs = [np.mean([_value("face_score", face=f) for f in b.faces.all()]) for _, b, _ in twins]
    tuned_fs = [np.mean([_value("face_score", face=f) for f in t.faces.all()]) for _, _, t in twins]
    prompts = [p for p, _, _ in twins]
    expected = paired_difference(base_fs, tuned_fs, prompts, n_boot=200, seed=0)
    block = result["human"]["face_score"]
    assert block["difference"] == pytest.approx(np.mean(np.subtract(tuned_fs, base_fs)), abs=1e-9)
    assert block["low"] == pytest.approx(expected.low) and block["high"] == pytest.approx(
        expected.high
    )
    assert (block["n_pairs"], block["n_prompts"], block["level"]) == (4, 2, "face")
    # image level on the human prompts and on the prompts without people
    base_ir = [_value("imagereward", generation=b) for _, b, _ in twins]
    tuned_ir = [_value("imagereward", generation=t) for _, _, t in twins]
    assert result["human"]["imagereward"]["difference"] == pytest.approx(
        np.mean(np.subtract(tuned_ir, base_ir)), abs=1e-9
    )
    general = _twins(job, GENERAL_PROMPTS[:1])
    general_diff = [
        _value("imagereward", generation=t) - _value("imagereward", generation=b)
        for _, b, t in general
    ]
    assert result["general"]["imagereward"]["difference"] == pytest.approx(
        np.mean(general_diff), abs=1e-9
    )
    assert result["general"]["imagereward"]["low"] is None  # one prompt: no interval
    assert set(result["general"]) == {"imagereward"}  # face metrics are not asked of landscapes
    # every face and image was scored, missing weights are reported, not faked
    assert Score.objects.filter(metric_version__metric="face_score").count() == 16
    assert result["metrics"]["face_score"]["status"] == "scored"
    assert result["metrics"]["hps_v2"]["status"] == "skipped"
    assert "HPS_v2_compressed.pt" in result["metrics"]["hps_v2"]["reason"]
    assert not MetricVersion.objects.filter(metric="hps_v2").exists()
    assert result["detection"]["faces_found"]["difference"] == 0.0
    assert job.progress_done == job.progress_total
    client = Client()
    client.force_login(job.created_by)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="/research/evaluations/{job.pk}/"' in page and "hps_v2" in page


def test_the_largest_face_aggregate_pairs_each_images_largest_face(tuned_job):
    job = _evaluate(
        tuned_job, face_aggregate="largest", metrics=["sharpness"], general_prompts=False
    )
    twins = _twins(job, PROMPTS)

    def largest(generation: Generation) -> float:
        face = max(generation.faces.all(), key=lambda f: f.size_px)
        return _value("sharpness", face=face)

    differences = [largest(t) - largest(b) for _, b, t in twins]
    block = job.result["human"]["sharpness"]
    assert block["aggregate"] == "largest"
    assert block["difference"] == pytest.approx(np.mean(differences), abs=1e-9)


def test_a_rerun_generates_and_scores_nothing_again_and_reports_the_same(quickly_evaluated):
    evaluated = quickly_evaluated
    before = evaluated.result
    n_generations, n_scores = Generation.objects.count(), Score.objects.count()
    Job.objects.filter(pk=evaluated.pk).update(status=Job.Status.RUNNING)
    again = run_evaluate_job(evaluated.pk)
    assert again["models"]["base"]["generated"] == again["models"]["tuned"]["generated"] == 0
    assert all(info.get("scored_now", 0) == 0 for info in again["metrics"].values())
    assert (Generation.objects.count(), Score.objects.count()) == (n_generations, n_scores)
    assert again["human"] == before["human"] and set(again["human"]) == {"imagereward", "sharpness"}


def test_one_click_opens_a_pairwise_campaign_of_base_and_tuned_faces_of_the_same_prompt_and_seed(
    quickly_evaluated, researcher, annotator
):
    evaluated = quickly_evaluated
    client = Client()
    client.force_login(researcher)
    page = client.get(f"/research/evaluations/{evaluated.pk}/").content.decode()
    assert "sharpness" in page and "Create the base-vs-tuned campaign" in page
    response = client.post(f"/research/evaluations/{evaluated.pk}/campaign/", {"overlap_k": 2})
    campaign = Campaign.objects.get()
    assert (
        response.status_code == 302
        and response["Location"] == f"/research/campaigns/{campaign.pk}/"
    )
    assert campaign.protocol == "pairwise" and campaign.blind and campaign.overlap_k == 2
    items = list(campaign.items.select_related("left_face__generation", "right_face__generation"))
    assert len(items) == 4
    tuned_label = evaluated.config["tuned"]["label"]
    for item in items:
        left, right = item.left_face.generation, item.right_face.generation
        assert (left.prompt, left.seed) == (right.prompt, right.seed)
        assert {left.model_name, right.model_name} == {"base", tuned_label}
        for face in (item.left_face, item.right_face):  # the largest face of each image
            assert face.size_px == max(
                f.size_px for f in Face.objects.filter(generation=face.generation)
            )
        assert item.judgments_wanted == 2 and not item.is_gold
    assert {i.left_face.generation.model_name for i in items} == {
        "base",
        tuned_label,
    }  # both orders
    evaluated.refresh_from_db()
    assert evaluated.result["campaign"] == campaign.pk
    # a second click lands on the same campaign; an annotator cannot click
    client.post(f"/research/evaluations/{evaluated.pk}/campaign/", {"overlap_k": 2})
    assert Campaign.objects.count() == 1
    member = Client()
    member.force_login(annotator)
    assert member.post(f"/research/evaluations/{evaluated.pk}/campaign/").status_code == 403


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({}, "tuned_job", "exactly one tuned model"),
        (
            {"tuned_lora": "MODELS/lora", "tuned_model": "MODELS/tiny-text2img"},
            "tuned_job",
            "exactly one",
        ),
        ({"tuned_lora": "MODELS/lora"}, "model", "Give the base model"),
        ({"tuned_lora": "MODELS/lora", "model": "/etc"}, "model", "outside the folders"),
        (
            {"tuned_lora": "MODELS/lora", "model": "MODELS/tiny-text2img", "metrics": ["nonsense"]},
            "metrics",
            "valid choice",
        ),
        (
            {"tuned_lora": "MODELS/lora", "model": "MODELS/tiny-text2img", "n_boot": 5},
            "n_boot",
            "100",
        ),
    ],
)
def test_bad_settings_are_refused_next_to_their_field_and_create_nothing(
    roots, changes, field, words
):
    changes = {
        k: v.replace("MODELS", str(roots)) if isinstance(v, str) else v for k, v in changes.items()
    }
    with pytest.raises(launch.LaunchInvalid) as refused:
        _launch(_data(**changes))
    errors = refused.value.form.errors
    assert field in errors and words in " ".join(errors[field]), errors
    assert not Job.objects.exists() and not Generation.objects.exists()


def test_a_lora_path_evaluates_against_the_base_given(roots):
    job = _launch(_data(tuned_lora=str(roots / "lora"), model=str(roots / "tiny-text2img")))
    assert job.config["tuned"]["label"] == "tuned:lora"
    assert job.config["tuned"]["lora"] == str(roots / "lora")
    assert (
        job.config["base"]["model"] == job.config["tuned"]["model"] == str(roots / "tiny-text2img")
    )


def test_only_admins_launch_evaluations(tuned_job, researcher):
    client = APIClient()
    client.force_authenticate(researcher)
    response = client.post("/api/launch/evaluate_dm/", _data(tuned_job=tuned_job.pk), format="json")
    assert response.status_code == 403
    assert not Job.objects.filter(kind=Job.Kind.EVALUATE_DM).exists()
