"""Time a full alignment report: 1,000,000 likert judgments, 50,000 faces, 5 metrics, 1,000
two-way bootstrap resamples — and, for scale, a plain per-resample scipy loop on a small case.

    .venv/bin/python bench/stats.py [--n-boot 1000] [--workers 2] [--pairwise 0]

Steps: simulate the study (seeded, not timed); run ``alignment_report`` and print its wall time
and per-part times (with worker processes, point_estimates and reliability run in the parent
while the workers resample: they overlap bootstrap, whose time runs from the workers' start to
the last replicate); run the naive loop (materialise each resample with ``np.repeat``, then
``scipy.stats.spearmanr`` / ``kendalltau`` / ``pearsonr`` per metric at face and image level)
on a few resamples of the same data and extrapolate it to the same number of resamples.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.stats import alignment_report, iter_resample_counts  # noqa: E402
from benchmark.stats.simulate import SimulatedStudy, simulate_study  # noqa: E402

METRICS = {
    "face_score": (1.0, 0.5),
    "image_reward": (0.6, 1.0),
    "hps": (0.4, 1.0),
    "aesthetic": (0.2, 1.0),
    "unrelated": (0.0, 1.0),
}


def naive_seconds_per_resample(study: SimulatedStudy, n_resamples: int, seed: int) -> float:
    """The obvious implementation: copy the resample, then call scipy per metric and level."""
    faces, likert = study.faces, study.likert
    n_annotators = int(likert.annotator.max()) + 1
    blocks = iter_resample_counts(
        n_prompts=faces.n_prompts,
        n_annotators=n_annotators,
        n_boot=n_resamples,
        seed=seed,
        chunk=n_resamples,
    )
    (counts,) = list(blocks)
    start = time.perf_counter()
    for b in range(n_resamples):
        judgment_copies = counts.annotator[b][likert.annotator].astype(int)
        face = np.repeat(likert.face, judgment_copies)
        rating = np.repeat(likert.rating, judgment_copies)
        with np.errstate(invalid="ignore", divide="ignore"):
            human = np.bincount(face, rating, faces.n_faces) / np.bincount(
                face, None, faces.n_faces
            )
        face_rows = np.repeat(np.arange(faces.n_faces), counts.prompt[b][faces.prompt].astype(int))
        face_rows = face_rows[np.isfinite(human[face_rows])]
        image_of_row = faces.image[face_rows]
        for values in study.metrics.values():
            h, m = human[face_rows], values[face_rows]
            scipy.stats.spearmanr(h, m)
            scipy.stats.kendalltau(h, m)
            scipy.stats.pearsonr(h, m)
            # Image level: mean of the faces of each image copy (copies share the image id).
            n_images = faces.n_images
            rows_per_image = np.bincount(image_of_row, None, n_images)
            with np.errstate(invalid="ignore", divide="ignore"):
                image_h = np.bincount(image_of_row, h, n_images) / rows_per_image
                image_m = np.bincount(image_of_row, m, n_images) / rows_per_image
            used = np.isfinite(image_h)
            faces_per_image = np.bincount(faces.image, None, n_images)
            weight = (rows_per_image[used] // faces_per_image[used]).astype(int)
            ih, im = np.repeat(image_h[used], weight), np.repeat(image_m[used], weight)
            scipy.stats.spearmanr(ih, im)
            scipy.stats.kendalltau(ih, im)
            scipy.stats.pearsonr(ih, im)
    return (time.perf_counter() - start) / n_resamples


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the forked workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pairwise", type=int, default=0, help="extra pairwise judgments")
    parser.add_argument("--naive-resamples", type=int, default=5)
    args = parser.parse_args()

    clock = time.perf_counter()
    study = simulate_study(
        n_prompts=5000,
        n_dms=5,
        max_faces_per_image=3,  # 1–3 faces, 2 on average: 50,000 faces
        n_annotators=500,
        judgments_per_face=20,
        metrics=METRICS,
        n_pairwise=args.pairwise,
        seed=0,
    )
    print(
        f"study: {len(study.likert):,} likert judgments, {study.faces.n_faces:,} faces, "
        f"{study.faces.n_images:,} images, {study.faces.n_prompts:,} prompts, 500 annotators, "
        f"{len(METRICS)} metrics, {args.pairwise:,} pairwise judgments "
        f"(simulated in {time.perf_counter() - clock:.1f} s)"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load} (other work slows every timing), "
        f"numpy {np.__version__}, scipy {scipy.__version__}"
    )

    clock = time.perf_counter()
    cpu_before = _cpu_seconds()
    report = alignment_report(
        faces=study.faces,
        likert=study.likert,
        pairwise=study.pairwise,
        metrics=study.metrics,
        n_boot=args.n_boot,
        seed=0,
        workers=args.workers,
    )
    wall = time.perf_counter() - clock
    cpu = _cpu_seconds() - cpu_before
    print(
        f"\nalignment_report, {args.n_boot} resamples, {args.workers} worker processes: "
        f"{wall:.2f} s wall, {cpu:.2f} s CPU (all processes and BLAS threads)"
    )
    for part, seconds in report["timings_s"].items():
        print(f"  {part:<28} {seconds:7.2f} s")
    per_resample = report["timings_s"]["bootstrap"] / max(args.n_boot, 1)
    print(f"  bootstrap per resample       {per_resample * 1e3:7.2f} ms (all statistics)")

    naive = naive_seconds_per_resample(study, args.naive_resamples, seed=1)
    print(
        f"\nnaive per-resample scipy loop (face+image ρ, τ-b, r only, {args.naive_resamples} "
        f"resamples): {naive * 1e3:.0f} ms per resample -> {naive * args.n_boot:.0f} s for "
        f"{args.n_boot} (extrapolated), {naive / per_resample:.0f}x the vectorised engine"
    )

    print("\nheadline (face level):")
    for row in report["headline"]["rows"]:
        cells = [row["values"][f"face_{s}"] for s in ("spearman", "kendall", "pearson")]
        text = "  ".join(f"{c['point']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" for c in cells)
        print(f"  {row['metric']:<14} ρ τ r: {text}")
    ceiling = report["headline"]["human_ceiling"]
    print(
        "  human ceiling  ρ τ r: "
        + "  ".join(
            f"{ceiling[f'face_{s}']['point']:+.3f}" for s in ("spearman", "kendall", "pearson")
        )
    )


if __name__ == "__main__":
    main()
