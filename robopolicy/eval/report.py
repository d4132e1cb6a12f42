"""Evaluation reports: ``report.json`` (everything) and a short ``report.md``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def build_report(
    *,
    suite: dict[str, Any],
    checkpoint: str | None,
    policy: str,
    episodes: list[dict[str, Any]],
    summary: dict[str, Any],
    latency_ms: dict[str, Any],
    mean_batch: float,
    wall_time_s: float,
    rollout_time_s: float,
    settings: dict[str, Any],
    grid_video: str | None = None,
) -> dict[str, Any]:
    """The report dict: success statistics first, then episode lengths, latency, network
    evaluations per env step (``nfe_per_step``: all episodes' NFE over all their steps), timing,
    episodes."""
    lengths = [e["length"] for e in episodes]
    ok_lengths = [e["length"] for e in episodes if e["success"]]
    steps = int(sum(lengths))
    return {
        "suite": suite["name"],
        "task": suite["task"],
        "policy": policy,
        "checkpoint": checkpoint,
        **summary,
        "mean_length": float(sum(lengths) / len(lengths)),
        "mean_length_success": float(sum(ok_lengths) / len(ok_lengths)) if ok_lengths else None,
        "latency_ms": latency_ms,
        "nfe_per_step": sum(e.get("nfe", 0) for e in episodes) / max(steps, 1),
        "mean_batch": mean_batch,
        "env_steps": steps,
        "env_steps_per_s": steps / max(rollout_time_s, 1e-9),
        "wall_time_s": wall_time_s,
        "videos": [e["video"] for e in episodes if e["video"]],
        "grid_video": grid_video,
        "settings": settings,
        "suite_config": suite,
        "per_episode": episodes,
    }


def to_markdown(report: dict[str, Any]) -> str:
    lo, hi = report["ci95"]
    lat = report["latency_ms"]
    rows = [
        f"# Evaluation: {report['suite']} ({report['task']})",
        "",
        f"- policy: `{report['policy']}`" + (f" from `{report['checkpoint']}`" if report["checkpoint"] else ""),
        f"- **success: {report['successes']}/{report['episodes']} = {report['success_rate']:.1%}** "
        f"(Wilson 95% CI {lo:.1%} – {hi:.1%})",
        f"- mean episode length: {report['mean_length']:.1f} steps"
        + (f" ({report['mean_length_success']:.1f} in successes)" if report["mean_length_success"] else ""),
        f"- inference latency per chunk: p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms "
        f"(batch of {report['mean_batch']:.1f} envs on average); "
        f"{report['nfe_per_step']:.2f} network evaluations per env step",
        f"- inference: `{json.dumps(report['settings'].get('inference', {}))}`",
        f"- {report['env_steps']} env steps at {report['env_steps_per_s']:.1f} steps/s; wall time {report['wall_time_s']:.1f} s",
        f"- seeds {report['per_episode'][0]['seed']}–{report['per_episode'][-1]['seed']}, "
        f"workers {report['settings']['workers']}, max_steps {report['suite_config']['max_steps']}",
    ]
    if report.get("grid_video"):
        grid, n = Path(report["grid_video"]).name, report["settings"].get("grid")
        what = f"Grid video of the first {n} episodes" if n else "Grid video"
        rows += ["", f"{what} (SUCCESS/FAILURE and seed on each tile): [{grid}](videos/{grid})"]
    if report["videos"]:
        rows += ["", "Videos:", *[f"- [{Path(v).name}](videos/{Path(v).name})" for v in report["videos"]]]
    return "\n".join(rows) + "\n"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(to_markdown(report))
