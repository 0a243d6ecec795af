"""Face Score end to end on tiny models built offline: wheel-shipped face photos → pairs crafted by
a tiny inpainting pipeline (``manage.py craft_pairs``) → a tiny Face Score trained on them
(``manage.py train_face_score``) → a new metric version whose checkpoint loads strictly → its
scoring job and the comparison report, run by a real Celery worker process.

Crafting and training run in the test's process through the commands (their in-process mode);
the follow-ups they queue run in the worker, as in production.
"""

from __future__ import annotations

import io
import shutil
import uuid

import numpy as np
import pytest
from django.core.management import call_command
from PIL import Image

from annotator.assignment import claim_items, submit_judgment
from annotator.campaigns import create_campaign
from annotator.demo import shifted_crop
from annotator.detection import detect_faces_for_generations
from annotator.models import Face
from benchmark.models import FacePair, MetricVersion, Report, Score
from jobs.models import Job, JobRecord
from ml import metrics as metric_zoo
from ml.metrics.imagereward import crop_face
from tests.factories import import_photos
from tests.images import astronaut, encode, grace_hopper
from tests.integration.worker import celery_worker, wait_until
from tests.ml.tiny_models import tiny_imagereward_state_dict, write_tiny_imagereward
from tests.ml.tiny_sd import write_tiny_sd

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

N_VIEWS = 6  # framings of each photo: 12 source images, one face each


def _accuracy(metric: metric_zoo.Metric, pairs: list[FacePair]) -> float:
    def crops(field: str) -> list[Image.Image]:
        return [crop_face(Image.open(getattr(p, field).path).convert("RGB"), p.box) for p in pairs]

    return float(
        (metric.score(crops("good_image")) > metric.score(crops("bad_image"))).float().mean()
    )


def _set(**values: object) -> list[str]:
    args = []
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    return args


def test_crafted_pairs_train_a_face_score_that_is_scored_and_reported(
    tmp_path, settings, monkeypatch, admin_user, annotator, annotator2
):
    weights, artifacts = tmp_path / "weights", tmp_path / "artifacts"
    settings.FACEBENCH_WEIGHTS_DIR, settings.FACEBENCH_ARTIFACTS_DIR = weights, artifacts
    monkeypatch.setenv("FACEBENCH_WEIGHTS_DIR", str(weights))  # for the worker process
    monkeypatch.setenv("FACEBENCH_ARTIFACTS_DIR", str(artifacts))
    write_tiny_sd(weights / "tiny-inpaint", inpaint=True)
    # The tiny random ImageReward already ranks every inpainted face below its photo. With its
    # last layer negated it ranks every one above (accuracy 0), so what training reaches is learned.
    start_state = tiny_imagereward_state_dict(seed=0)
    start_state["mlp.layers.7.weight"] = -start_state["mlp.layers.7.weight"]
    start_state["mlp.layers.7.bias"] = -start_state["mlp.layers.7.bias"]
    write_tiny_imagereward(weights, state_dict=start_state)
    photos = weights / "photos"
    photos.mkdir()
    for name, photo in (("astronaut", astronaut()), ("grace_hopper", grace_hopper())):
        for view in range(N_VIEWS):
            (photos / f"{name}-{view}.png").write_bytes(encode(shifted_crop(photo, view)))

    # 1. craft pairs from the photos with the tiny inpainting pipeline
    out = io.StringIO()
    craft_settings = _set(
        source="folder",
        folder="photos",
        model="tiny-inpaint",
        detector="haar",
        steps=2,
        resolution=64,
        batch_size=4,
        min_confidence=0,
        mask__min_face_px=32,
        val_fraction=0.25,
        seed=1,
    )
    call_command("craft_pairs", *craft_settings, "--user", admin_user.username, stdout=out)
    craft = Job.objects.get(kind=Job.Kind.CRAFT_PAIRS)
    assert craft.status == Job.Status.SUCCEEDED, craft.error + craft.log_tail
    # Haar finds each photo's face, and a few false faces in some framings: all are crafted
    assert (
        craft.result["pairs"] == craft.result["faces"] == FacePair.objects.count() >= 2 * N_VIEWS
    ), craft.result
    train_pairs = list(FacePair.objects.filter(split="train"))
    assert 0 < craft.result["val"] < len(train_pairs)

    # the starting weights (ImageReward) as a Face Score, for the accuracy before training
    start = tmp_path / "start"
    (start / "FaceScore").mkdir(parents=True)
    for name in ("med_config.json", "vision_config.json"):
        shutil.copy(weights / "ImageReward" / name, start / "FaceScore" / name)
    shutil.copy(weights / "ImageReward" / "ImageReward.pt", start / "FaceScore" / "FS_model.pt")
    shutil.copytree(weights / "bert-base-uncased", start / "bert-base-uncased")
    before = _accuracy(metric_zoo.create("face_score", weights_dir=start), train_pairs)

    # a likert campaign on another dataset of the photos, for the report
    dataset = import_photos(tmp_path / "upload", copies=2)
    detect_faces_for_generations(
        generation_ids=list(dataset.generations.values_list("id", flat=True)), detector_name="haar"
    )
    raters = [annotator, annotator2]
    campaign = create_campaign(
        name="faces", protocol="likert", datasets=[dataset], annotators=raters, overlap_k=2
    )
    for offset, rater in enumerate(raters):
        rating = offset
        while claimed := claim_items(campaign=campaign, annotator=rater).assignments:
            rating = rating % 5 + 1
            submit_judgment(
                annotator=rater,
                item_id=claimed[0].item_id,
                idempotency_key=uuid.uuid4(),
                rating=rating,
            )

    # 2. train a tiny Face Score on the pairs, fixed seed
    train_settings = _set(
        crafting_jobs=f"[{craft.pk}]",
        score_dataset=dataset.pk,
        report_campaigns=f"[{campaign.pk}]",
        report_settings='{"n_boot": 20}',
        max_steps=36,
        warmup_steps=3,
        batch_size=4,
        accumulation=1,
        lr=0.001,
        val_every=12,
        checkpoint_every=12,
        mixed_precision="no",
        seed=0,
    )
    call_command("train_face_score", *train_settings, "--user", admin_user.username, stdout=out)
    train = Job.objects.get(kind=Job.Kind.TRAIN_FACE_SCORE)
    assert train.status == Job.Status.SUCCEEDED, train.error + train.log_tail
    assert JobRecord.objects.filter(job=train, step__gte=1).count() == 36

    # 3. the checkpoint loads strictly into the Face Score metric and has learned the pairs
    version = MetricVersion.objects.get(pk=train.result["metric_version"])
    trained = metric_zoo.create(
        "face_score", weights_dir=artifacts / version.settings["weights_dir"]
    )
    after = _accuracy(trained, train_pairs)
    assert before <= 0.1 and after >= 0.9, (before, after)

    # 4. its scoring job and then the report run in a real worker
    scoring = Job.objects.get(pk=train.result["scoring_job"])
    log = tmp_path / "worker.log"
    with celery_worker(log=log):
        wait_until(
            lambda: (
                Report.objects.filter(job__status__in=Job.FINISHED).exists()
                or Job.objects.get(pk=scoring.pk).status == Job.Status.FAILED
            ),
            timeout=240,
            what=f"scoring job {scoring.pk} and its report (worker log: {log})",
        )
    scoring.refresh_from_db()
    assert scoring.status == Job.Status.SUCCEEDED, scoring.error or log.read_text()[-3000:]
    faces = Face.objects.filter(generation__dataset=dataset)
    scores = Score.objects.filter(metric_version=version, face__in=faces)
    assert scores.count() == faces.count() > 0 and not scores.filter(value__isnull=True).exists()
    expected = trained.score(
        [
            crop_face(Image.open(f.generation.image.path).convert("RGB"), f.box)
            for f in faces.order_by("id")
        ]
    )
    assert np.allclose([s.value for s in scores.order_by("face_id")], expected.numpy(), atol=1e-4)
    report = Report.objects.get()
    assert report.job.status == Job.Status.SUCCEEDED, report.job.error
    assert (
        version in report.metric_versions.all()
        and MetricVersion.objects.get(metric="imagereward") in report.metric_versions.all()
    )
    assert len(report.results["metrics"]) >= 2
