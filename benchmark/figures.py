"""Report figures, drawn server-side from ``Report.results`` with matplotlib (Agg, no display).

Figures are rendered on demand from the stored numbers, never from the database, so a frozen
report always draws the same picture. SVG output is made deterministic (fixed hash salt, no date
in the metadata) so the same report gives byte-identical files.

- ``scatter-<i>``: metric i (raw values) against the humans' score per face, coloured by DM.
- ``forest``: every metric's correlations with their CIs, the human ceiling as a band.
- ``leaderboard``: DM ranks by the humans beside each metric's ranking of the DMs.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

FORMATS = {"svg": "image/svg+xml", "png": "image/png"}
FOREST_COLUMNS = ("face_spearman", "face_kendall", "face_pearson", "image_spearman")
PALETTE = ("#2457c5", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#30343f", "#e07a5f")


def figure_names(results: Mapping[str, Any]) -> list[str]:
    """The figures a report has, in page order."""
    names = [f"scatter-{i}" for i in range(len(results.get("metrics", [])))]
    return ["forest", "leaderboard", *names]


def figure_title(results: Mapping[str, Any], name: str) -> str:
    if name == "forest":
        return "Correlation with the humans, with confidence intervals"
    if name == "leaderboard":
        return "DM ranking: humans and each metric"
    return f"{_metric(results, name)} against the humans, per face"


def _metric(results: Mapping[str, Any], name: str) -> str:
    index = int(name.split("-", 1)[1])
    return str(results["metrics"][index])


def draw(results: Mapping[str, Any], name: str) -> Figure:
    """The named figure; ``KeyError`` for a name the report does not have."""
    if name not in figure_names(results):
        raise KeyError(name)
    makers: dict[str, Callable[[Mapping[str, Any]], Figure]] = {
        "forest": forest_plot,
        "leaderboard": leaderboard_plot,
    }
    if name in makers:
        return makers[name](results)
    return scatter_plot(results, _metric(results, name))


def render(figure: Figure, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "svg":
        with plt.rc_context({"svg.hashsalt": "facebench", "svg.fonttype": "none"}):
            figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    elif fmt == "png":
        figure.savefig(
            buffer, format="png", dpi=120, metadata={"Software": None}, bbox_inches="tight"
        )
    else:
        raise ValueError(f"unknown figure format {fmt!r}")
    plt.close(figure)
    return buffer.getvalue()


def render_figure(results: Mapping[str, Any], name: str, fmt: str) -> bytes:
    return render(draw(results, name), fmt)


def _new(width: float, height: float) -> tuple[Figure, Any]:
    # Figure() rather than plt.figure(): no global pyplot state in a threaded web server.
    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def scatter_plot(results: Mapping[str, Any], metric: str) -> Figure:
    faces = results["faces"]
    values = faces["values"][metric]
    human = faces["human"]
    dm_labels = results.get("dm_labels", [])
    figure, ax = _new(5.2, 4.0)
    for k, label in enumerate(dm_labels):
        points = [
            (v, h)
            for v, h, dm in zip(values, human, faces["dm"], strict=True)
            if dm == k and _finite(v) and _finite(h)
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            # Rasterised markers keep the SVG small for thousands of faces; text stays vector.
            ax.scatter(
                xs,
                ys,
                s=14,
                alpha=0.7,
                color=PALETTE[k % len(PALETTE)],
                label=label,
                rasterized=len(points) > 2000,
            )
    row = next((r for r in results["headline"]["rows"] if r["metric"] == metric), None)
    rho = (row or {}).get("values", {}).get("face_spearman") or {}
    if _finite(rho.get("point")):
        ax.set_title(
            f"Spearman ρ = {rho['point']:.3f} [{_fmt(rho.get('low'))}, {_fmt(rho.get('high'))}]",
            fontsize=10,
        )
    ax.set_xlabel(metric)
    ax.set_ylabel(f"humans ({faces.get('human_score', 'mean rating')})")
    ax.grid(alpha=0.3)
    if dm_labels:
        ax.legend(fontsize=8, title="DM", title_fontsize=8, loc="best")
    return figure


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if _finite(value) else "–"


def forest_plot(results: Mapping[str, Any]) -> Figure:
    headline = results["headline"]
    columns = [c for c in FOREST_COLUMNS if c in headline["columns"]]
    if not columns:  # a pairwise-only report: its accuracies instead
        columns = [c for c in headline["columns"] if c.startswith("campaign_")]
    metrics = [r["metric"] for r in headline["rows"]]
    height = 1.0 + 0.32 * len(metrics) * max(len(columns), 1)
    figure, ax = _new(7.0, max(height, 2.5))
    labels, y = [], 0.0
    for c, column in enumerate(columns):
        ceiling = headline.get("human_ceiling", {}).get(column)
        top = y
        for row in headline["rows"]:
            ci = row["values"].get(column) or {}
            if _finite(ci.get("point")):
                low = ci["low"] if _finite(ci.get("low")) else ci["point"]
                high = ci["high"] if _finite(ci.get("high")) else ci["point"]
                ax.errorbar(
                    ci["point"],
                    y,
                    xerr=[[ci["point"] - low], [high - ci["point"]]],
                    fmt="o",
                    color=PALETTE[c % len(PALETTE)],
                    capsize=3,
                    markersize=5,
                )
            labels.append((y, f"{row['metric']} · {column}"))
            y += 1
        if ceiling and _finite(ceiling.get("point")):
            low = ceiling["low"] if _finite(ceiling.get("low")) else ceiling["point"]
            high = ceiling["high"] if _finite(ceiling.get("high")) else ceiling["point"]
            ax.fill_betweenx(
                [top - 0.4, y - 0.6], low, high, color="#999999", alpha=0.25, linewidth=0
            )
            ax.vlines(
                ceiling["point"], top - 0.4, y - 0.6, color="#555555", linestyle="--", linewidth=1
            )
        y += 0.6
    ax.axvline(0, color="#333333", linewidth=0.8)
    ax.set_yticks([p for p, _ in labels], [t for _, t in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("correlation with the humans (grey band: human ceiling)")
    ax.grid(axis="x", alpha=0.3)
    return figure


def dm_ranks(results: Mapping[str, Any]) -> dict[str, list[int | None]]:
    """Rank (1 = best) of every DM by the humans and by each metric; ``None`` without a value."""
    board = results.get("dm_leaderboard", {})
    series: dict[str, list[Any]] = {}
    human = board.get("human_mean") or board.get("bradley_terry_log_strength")
    if human:
        series["humans"] = [c.get("point") for c in human]
    # The engine saw lower-is-better metrics negated, so a higher mean is better for every series.
    for metric, cis in board.get("metric_mean", {}).items():
        series[metric] = [c.get("point") for c in cis]
    ranks: dict[str, list[int | None]] = {}
    for name, points in series.items():
        order = sorted((p, k) for k, p in enumerate(points) if _finite(p))
        rank: list[int | None] = [None] * len(points)
        for position, (_, k) in enumerate(reversed(order), start=1):
            rank[k] = position
        ranks[name] = rank
    return ranks


def leaderboard_plot(results: Mapping[str, Any]) -> Figure:
    ranks = dm_ranks(results)
    labels = results.get("dm_labels", [])
    columns = list(ranks)
    figure, ax = _new(max(4.0, 1.6 + 1.3 * len(columns)), max(2.5, 0.9 + 0.45 * len(labels)))
    for k, label in enumerate(labels):
        xs = [i for i, c in enumerate(columns) if ranks[c][k] is not None]
        ys = [ranks[c][k] for c in columns if ranks[c][k] is not None]
        ax.plot(
            xs, ys, "-o", color=PALETTE[k % len(PALETTE)], label=label, linewidth=2, markersize=7
        )
    ax.set_xticks(range(len(columns)), columns, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(1, len(labels) + 1))
    ax.set_ylim(len(labels) + 0.5, 0.5)
    ax.set_ylabel("rank (1 = best)")
    ax.grid(alpha=0.3)
    if labels:
        ax.legend(
            fontsize=8, title="DM", title_fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5)
        )
    return figure
