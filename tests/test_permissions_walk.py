"""Every URL of the site, with every role and anonymous.

The table below must name every URL pattern: a new page or endpoint fails this test until its
access rule is written down here. For each (URL, role) the test asserts "reached" (no 401/403,
no redirect to a login page) or "refused" (401/403/404, or a redirect to log in). Whatever an
annotator reaches must not contain a model name, a gold flag or a metric.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver

from annotator.assignment import claim_items, submit_judgment
from annotator.campaigns import create_campaign
from benchmark.models import MetricVersion, Score
from jobs.models import Job
from tests.factories import make_dataset
from tests.images import encode, flat_image

pytestmark = pytest.mark.django_db

ANON, MEMBER, OTHER, RESEARCHER, ADMIN = "anonymous", "member", "other_annotator", "researcher", "admin"
ROLES = (ANON, MEMBER, OTHER, RESEARCHER, ADMIN)
LOGGED_IN = {MEMBER, OTHER, RESEARCHER, ADMIN}
RESEARCH = {RESEARCHER, ADMIN}
SECRET_MODEL = "secret-dm-xyz"


@dataclass
class World:
    campaign: int
    dataset: int
    item: int
    face: int
    generation: int
    other_judgment: int
    job: int
    scoring_job: int
    member_username: str
    member_id: int


@pytest.fixture
def world(annotator, annotator2, researcher) -> World:
    dataset = make_dataset(models=(SECRET_MODEL, "other-dm"))
    png = encode(flat_image(512, 512))
    for generation in dataset.generations.all():
        generation.image.storage.save(generation.image.name, ContentFile(png))
    campaign = create_campaign(
        name="walk", protocol="likert", datasets=[dataset], annotators=[annotator, annotator2], overlap_k=1
    )
    (mine,) = claim_items(campaign=campaign, annotator=annotator).assignments
    (theirs,) = claim_items(campaign=campaign, annotator=annotator2).assignments
    other = submit_judgment(annotator=annotator2, item_id=theirs.item_id, idempotency_key=uuid.uuid4(), rating=2)
    version = MetricVersion.objects.create(metric="face_size", level="face")
    Score.objects.create(metric_version=version, face=mine.item.face, value=123.0)
    job = Job.objects.create(kind=Job.Kind.IMPORT, created_by=researcher)
    scoring = Job.objects.create(kind=Job.Kind.SCORE, created_by=researcher, config={"metrics": ["face_size"]})
    return World(
        campaign=campaign.pk,
        dataset=dataset.pk,
        item=mine.item_id,
        face=mine.item.face_id,
        generation=mine.item.face.generation_id,
        other_judgment=other.judgment.pk,
        job=job.pk,
        scoring_job=scoring.pk,
        member_username=annotator.username,
        member_id=annotator.pk,
    )


@dataclass
class Rule:
    method: str
    url: Callable[[World], str]
    allowed: set[str]


def _c(w: World) -> int:
    return w.campaign


def _report(w: World) -> int:
    """A finished report (on a small synthetic campaign), so its downloads and figures exist."""
    from benchmark.models import Report
    from benchmark.reports import build_results
    from tests.benchmark.synthetic_campaign import make_synthetic_campaign

    synthetic = make_synthetic_campaign(name="walk-report", n_prompts=4)
    settings = {"n_boot": 20, "breakdown_n_boot": 10}
    results = build_results(campaigns=[synthetic.campaign], metric_versions=[synthetic.tracks], settings=settings)
    report = Report.objects.create(title="walk", settings=settings, results=results)
    report.campaigns.set([synthetic.campaign])
    report.metric_versions.set([synthetic.tracks])
    return report.pk


def _export(w: World) -> int:
    """A finished snapshot export of the walk's campaign, so its zip downloads."""
    from annotator.models import Campaign
    from benchmark.snapshots import build_snapshot

    job = Job.objects.create(kind=Job.Kind.EXPORT, status=Job.Status.SUCCEEDED, config={"campaign_id": w.campaign})
    job.result = build_snapshot(Campaign.objects.get(pk=w.campaign), f"exports/{job.pk}")
    job.save()
    return job.pk


def _craft_job(w: World) -> int:
    """A finished crafting job with one pair and one artifact file, so its pages have content."""
    from PIL import Image

    from benchmark.models import FacePair
    from benchmark.pairs import store_png

    job = Job.objects.create(kind=Job.Kind.CRAFT_PAIRS, status=Job.Status.SUCCEEDED, config={"source": "folder"})
    image = store_png(Image.fromarray(flat_image(64, 64)))
    FacePair.objects.create(
        crafting_job=job, source_key="file:a.png", face_index=0, box=[1, 1, 9, 9], seed=0,
        good_image=image, bad_image=image, mask_image=image,
    )
    job.artifact_dir.mkdir(parents=True, exist_ok=True)
    (job.artifact_dir / "notes.txt").write_text("artifact")
    return job.pk


def _pair(w: World) -> int:
    from benchmark.models import FacePair

    return FacePair.objects.get(crafting_job_id=_craft_job(w)).pk


def _evaluation(w: World) -> int:
    """An evaluation job (not finished: its page says so, its campaign button is refused)."""
    return Job.objects.create(kind=Job.Kind.EVALUATE_DM).pk


RULES: dict[str, Rule] = {
    "schema": Rule("get", lambda w: "/api/schema/", LOGGED_IN),
    "api-docs": Rule("get", lambda w: "/api/docs/", LOGGED_IN),
    "api-root": Rule("get", lambda w: "/api/", LOGGED_IN),
    "home": Rule("get", lambda w: "/", LOGGED_IN),
    "login": Rule("get", lambda w: "/accounts/login/", set(ROLES)),
    # Logging out lands everyone on the login page, which the walk reads as "refused".
    "logout": Rule("post", lambda w: "/accounts/logout/", set()),
    "annotate": Rule("get", lambda w: f"/campaigns/{_c(w)}/annotate/", {MEMBER, OTHER}),
    "item-image": Rule("get", lambda w: f"/images/items/{w.item}/single/crop.png", {MEMBER} | RESEARCH),
    # researcher pages
    "research-campaigns": Rule("get", lambda w: "/research/campaigns/", RESEARCH),
    "campaign-create": Rule("get", lambda w: "/research/campaigns/new/", RESEARCH),
    "campaign-detail": Rule("get", lambda w: f"/research/campaigns/{_c(w)}/", RESEARCH),
    "campaign-status": Rule("post", lambda w: f"/research/campaigns/{_c(w)}/status/", RESEARCH),
    "campaign-resume-annotator": Rule("post", lambda w: f"/research/campaigns/{_c(w)}/annotators/{w.member_id}/resume/", RESEARCH),
    "campaign-export": Rule("get", lambda w: f"/research/campaigns/{_c(w)}/export.csv", RESEARCH),
    "datasets": Rule("get", lambda w: "/datasets/", RESEARCH),
    "dataset-upload": Rule("get", lambda w: "/datasets/upload/", RESEARCH),
    "dataset-detail": Rule("get", lambda w: f"/datasets/{w.dataset}/", RESEARCH),
    "dataset-detect": Rule("post", lambda w: f"/datasets/{w.dataset}/detect/", RESEARCH),
    "import-job": Rule("get", lambda w: f"/datasets/jobs/{w.job}/", RESEARCH),
    "generation-image": Rule("get", lambda w: f"/images/generations/{w.generation}.png", RESEARCH),
    "face-crop": Rule("get", lambda w: f"/images/faces/{w.face}/crop.png", RESEARCH),
    "metrics": Rule("get", lambda w: "/research/metrics/", RESEARCH),
    "scoring-job": Rule("get", lambda w: f"/research/scoring/{w.scoring_job}/", RESEARCH),
    "scoring-job-resume": Rule("post", lambda w: f"/research/scoring/{w.scoring_job}/resume/", RESEARCH),
    "scoring-job-cancel": Rule("post", lambda w: f"/research/scoring/{w.scoring_job}/cancel/", RESEARCH),
    "report-list": Rule("get", lambda w: "/research/reports/", RESEARCH),
    "report-detail": Rule("get", lambda w: f"/research/reports/{_report(w)}/", RESEARCH),
    "report-rebuild": Rule("post", lambda w: f"/research/reports/{_report(w)}/rebuild/", RESEARCH),
    "report-download": Rule("get", lambda w: f"/research/reports/{_report(w)}/report.csv", RESEARCH),
    "report-figure": Rule("get", lambda w: f"/research/reports/{_report(w)}/figures/forest.svg", RESEARCH),
    "campaign-dashboard": Rule("get", lambda w: f"/research/campaigns/{_c(w)}/dashboard/", RESEARCH),
    "campaign-snapshot": Rule("post", lambda w: f"/research/campaigns/{_c(w)}/snapshot/", RESEARCH),
    "export-job": Rule("get", lambda w: f"/research/exports/{_export(w)}/", RESEARCH),
    "export-download": Rule("get", lambda w: f"/research/exports/{_export(w)}/download/", RESEARCH),
    # launched jobs (pair crafting, training): admins launch and cancel, researchers read
    "jobs": Rule("get", lambda w: "/jobs/", RESEARCH),
    "launch": Rule("get", lambda w: "/launch/", {ADMIN}),
    "launch-kind": Rule("get", lambda w: "/launch/craft_pairs/", {ADMIN}),
    "job-detail": Rule("get", lambda w: f"/jobs/{_craft_job(w)}/", RESEARCH),
    "job-cancel": Rule("post", lambda w: f"/jobs/{w.scoring_job}/cancel/", {ADMIN}),
    "job-artifact": Rule("get", lambda w: f"/jobs/{_craft_job(w)}/artifacts/notes.txt", RESEARCH),
    "pair-image": Rule("get", lambda w: f"/pairs/{_pair(w)}/bad.png", RESEARCH),
    "api-launch-kinds": Rule("get", lambda w: "/api/launch/", {ADMIN}),
    "api-launch": Rule("post", lambda w: "/api/launch/craft_pairs/", {ADMIN}),
    "api-job-progress": Rule("get", lambda w: f"/api/jobs/{_craft_job(w)}/progress/", RESEARCH),
    "api-job-cancel": Rule("post", lambda w: f"/api/jobs/{w.scoring_job}/cancel/", {ADMIN}),
    # DM evaluation report and its one-click pairwise campaign: researchers, like campaigns
    "evaluation-detail": Rule("get", lambda w: f"/research/evaluations/{_evaluation(w)}/", RESEARCH),
    "evaluation-campaign": Rule("post", lambda w: f"/research/evaluations/{_evaluation(w)}/campaign/", RESEARCH),
    # API
    "api-datasets": Rule("get", lambda w: "/api/datasets/", RESEARCH),
    "api-dataset": Rule("get", lambda w: f"/api/datasets/{w.dataset}/", RESEARCH),
    "api-dataset-imports": Rule("post", lambda w: f"/api/datasets/{w.dataset}/imports/", RESEARCH),
    "api-job": Rule("get", lambda w: f"/api/jobs/{w.job}/", RESEARCH),
    "api-campaign-list": Rule("get", lambda w: "/api/campaigns/", LOGGED_IN),
    "api-campaign-detail": Rule("get", lambda w: f"/api/campaigns/{_c(w)}/", {MEMBER, OTHER} | RESEARCH),
    "api-campaign-export": Rule("get", lambda w: f"/api/campaigns/{_c(w)}/export/", RESEARCH),
    "api-campaign-gold": Rule("post", lambda w: f"/api/campaigns/{_c(w)}/gold/", RESEARCH),
    "api-campaign-resume": Rule("post", lambda w: f"/api/campaigns/{_c(w)}/annotators/{w.member_username}/resume/", RESEARCH),
    "api-campaign-next": Rule("post", lambda w: f"/api/campaigns/{_c(w)}/next/", {MEMBER, OTHER}),
    "api-campaign-skip": Rule("post", lambda w: f"/api/campaigns/{_c(w)}/skip/", {MEMBER, OTHER}),
    "api-campaign-undo": Rule("post", lambda w: f"/api/campaigns/{_c(w)}/undo/", {MEMBER, OTHER}),
    "api-judgment-list": Rule("get", lambda w: "/api/judgments/", LOGGED_IN),
    "api-judgment-detail": Rule("get", lambda w: f"/api/judgments/{w.other_judgment}/", {OTHER} | RESEARCH),
    "api-generation-list": Rule("get", lambda w: "/api/generations/", RESEARCH),
    "api-generation-detail": Rule("get", lambda w: f"/api/generations/{w.generation}/", RESEARCH),
    "api-face-list": Rule("get", lambda w: "/api/faces/", RESEARCH),
    "api-face-detail": Rule("get", lambda w: f"/api/faces/{w.face}/", RESEARCH),
    "api-metrics": Rule("get", lambda w: "/api/metrics/", RESEARCH),
    "api-metric-versions": Rule("get", lambda w: "/api/metric-versions/", RESEARCH),
    "api-scores": Rule("get", lambda w: "/api/scores/", RESEARCH),
    "api-scoring-jobs": Rule("post", lambda w: "/api/scoring-jobs/", RESEARCH),
    "api-reports": Rule("get", lambda w: "/api/reports/", RESEARCH),
    "api-report": Rule("get", lambda w: f"/api/reports/{_report(w)}/", RESEARCH),
    "api-campaign-snapshot": Rule("post", lambda w: f"/api/campaigns/{_c(w)}/snapshot/", RESEARCH),
    "api-campaign-dashboard": Rule("get", lambda w: f"/api/campaigns/{_c(w)}/dashboard/", RESEARCH),
    "api-export-download": Rule("get", lambda w: f"/api/exports/{_export(w)}/download/", RESEARCH),
}


def _url_names(patterns: list[Any]) -> set[str]:
    names: set[str] = set()
    for p in patterns:
        if isinstance(p, URLResolver):
            if getattr(p, "app_name", None) == "admin":
                continue
            names |= _url_names(p.url_patterns)
        elif isinstance(p, URLPattern) and p.name:
            names.add(p.name)
    return names


def test_every_url_has_an_access_rule():
    assert _url_names(get_resolver().url_patterns) == set(RULES)


def _client(role: str, users: dict[str, Any]) -> Client:
    client = Client()
    if role != ANON:
        client.force_login(users[role])
    return client


def _refused(response) -> bool:
    if response.status_code in (401, 403, 404):
        return True
    return response.status_code == 302 and "login" in response.get("Location", "")


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_role_is_reached_or_refused_as_the_rule_says(name, world, annotator, annotator2, researcher, admin_user):
    users = {MEMBER: annotator, OTHER: annotator2, RESEARCHER: researcher, ADMIN: admin_user}
    rule = RULES[name]
    url = rule.url(world)
    for role in ROLES:
        response = getattr(_client(role, users), rule.method)(url)
        if role in rule.allowed:
            assert not _refused(response), f"{role} was refused {rule.method.upper()} {url}: {response.status_code}"
            if role in (MEMBER, OTHER) and response.get("Content-Type", "").startswith(("text/", "application/json")):
                body = b"".join(response.streaming_content) if response.streaming else response.content
                assert SECRET_MODEL.encode() not in body, f"{url} shows a model name to an annotator"
                assert b"123.0" not in body and b"gold" not in body.lower(), f"{url} shows a metric or gold to an annotator"
        else:
            assert _refused(response), f"{role} reached {rule.method.upper()} {url}: {response.status_code}"


@pytest.mark.parametrize("role", [MEMBER, RESEARCHER])
def test_django_admin_is_for_staff_only(role, annotator, researcher, admin_user):
    users = {MEMBER: annotator, RESEARCHER: researcher}
    response = _client(role, users).get("/admin/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert _client(ADMIN, {ADMIN: admin_user}).get("/admin/annotator/judgment/").status_code == 200


def test_csrf_is_enforced_on_forms_and_session_api_posts(world, researcher, annotator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(researcher)
    assert client.post("/research/campaigns/new/", {"name": "x"}).status_code == 403
    assert client.post(f"/research/campaigns/{world.campaign}/status/", {"status": "finished"}).status_code == 403
    assert client.post("/accounts/logout/").status_code == 403
    member = Client(enforce_csrf_checks=True)
    member.force_login(annotator)
    response = member.post("/api/judgments/", {"idempotency_key": str(uuid.uuid4()), "item": world.item, "rating": 3})
    assert response.status_code == 403 and "CSRF" in response.json()["detail"]
