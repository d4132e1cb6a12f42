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
    extras: dict[str, Any] = {}
    if any("goal_reached_t" in e for e in episodes):
        extras["goals"] = {
            "task_successes": sum(bool(e.get("task_success")) for e in episodes),
            "goals_reached": sum(e.get("goal_reached_t") is not None for e in episodes),
        }
    if any(e.get("energy") for e in episodes):
        extras["energy"] = energy_summary(episodes)
    if any(e.get("outcome") for e in episodes):
        extras["outcomes"] = outcome_counts(episodes)
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
        **extras,
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
    if "goals" in report:
        g = report["goals"]
        rows.append(
            f"- goal-conditioned: task success {g['task_successes']}/{report['episodes']}, "
            f"goal reached {g['goals_reached']}/{report['episodes']}"
        )
    for key, counts in report.get("outcomes", {}).items():
        rows.append(f"- outcome `{key}`: " + ", ".join(f"{v} {n}/{report['episodes']}" for v, n in counts.items()))
    if report["suite_config"].get("perturbation"):
        rows.append(f"- scripted perturbation: `{json.dumps(report['suite_config']['perturbation'])}`")
    if "energy" in report:
        e = report["energy"]
        rows.append(
            f"- final chunk energy: {_fmt(e['success_mean_last'])} in successes, {_fmt(e['failure_mean_last'])} in "
            f"failures; whole-episode mean {_fmt(e['success_mean'])} vs {_fmt(e['failure_mean'])} "
            "([energy_vs_time.png](energy_vs_time.png))"
        )
    if report.get("grid_video"):
        grid, n = Path(report["grid_video"]).name, report["settings"].get("grid")
        what = f"Grid video of the first {n} episodes" if n else "Grid video"
        rows += ["", f"{what} (SUCCESS/FAILURE and seed on each tile): [{grid}](videos/{grid})"]
    if report["videos"]:
        rows += ["", "Videos:", *[f"- [{Path(v).name}](videos/{Path(v).name})" for v in report["videos"]]]
    return "\n".join(rows) + "\n"


def outcome_counts(episodes: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``{key: {value: episodes}}`` over the episodes' categorical ``outcome`` dicts (tasks that
    define one, e.g. LiftCue's ``placed``), values in order of first appearance."""
    out: dict[str, dict[str, int]] = {}
    for e in episodes:
        for key, value in (e.get("outcome") or {}).items():
            counts = out.setdefault(key, {})
            counts[str(value)] = counts.get(str(value), 0) + 1
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def energy_summary(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean chunk energy (whole episode, and the episode's last chunk) in successful and in
    failed episodes (``episode["energy"] = [[env step, energy], ...]``)."""

    def mean(values: list[float]) -> float | None:
        return float(sum(values) / len(values)) if values else None

    out: dict[str, Any] = {}
    for name, ok in (("success", True), ("failure", False)):
        eps = [e["energy"] for e in episodes if e.get("energy") and bool(e["success"]) is ok]
        out[f"{name}_mean"] = mean([v for ep in eps for _, v in ep])
        out[f"{name}_mean_last"] = mean([ep[-1][1] for ep in eps])
        out[f"{name}_episodes"] = len(eps)
    return out


def plot_energy(report: dict[str, Any], path: Path) -> Path | None:
    """Energy of each chunk against the env step, successful episodes green, failed red."""
    eps = [e for e in report["per_episode"] if e.get("energy")]
    if not eps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for ok, color, label in ((True, "tab:green", "success"), (False, "tab:red", "failure")):
        group = [e for e in eps if bool(e["success"]) is ok]
        for k, e in enumerate(group):
            t, v = zip(*e["energy"])
            ax.plot(t, v, color=color, alpha=0.35, lw=1, label=f"{label} ({len(group)})" if k == 0 else None)
    ax.set_xlabel("env step")
    ax.set_ylabel("chunk energy (final inference step)")
    ax.set_title(f"{report['policy']} on {report['suite']}: energy over time")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(to_markdown(report))
    plot_energy(report, out / "energy_vs_time.png")
