"""Wilson interval against published values; suite parsing and its errors."""

from __future__ import annotations

import pytest

from robopolicy.eval.metrics import percentiles, success_summary, wilson_interval
from robopolicy.eval.suite import Suite, load_suite


@pytest.mark.parametrize(
    "k, n, lo, hi",
    [
        (8, 10, 0.4902, 0.9433),  # statsmodels proportion_confint(8, 10, method="wilson")
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (45, 50, 0.7864, 0.9565),
        (1, 2, 0.0945, 0.9055),
    ],
)
def test_wilson_interval_known_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=5e-5)


def test_wilson_interval_errors_and_summary():
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    s = success_summary([True, False, True, True])
    assert (s["episodes"], s["successes"], s["success_rate"]) == (4, 3, 0.75)
    assert s["ci95"][0] < 0.75 < s["ci95"][1]
    assert percentiles([1, 2, 3, 4, 100]) == {"p50": 3.0, "p95": pytest.approx(80.8)}
    assert percentiles([]) == {"p50": None, "p95": None}


def test_shipped_suites_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "sim"
    names = sorted(p.stem for p in root.glob("*.yaml"))
    for want in ("lift", "can", "square", "stack"):
        assert f"{want}_lowdim" in names and f"{want}_image" in names
    for name in names:
        s = load_suite(root / f"{name}.yaml")
        assert s.name == name and s.seed_start >= 100_000 and s.robot == "Panda"
        assert bool(s.cameras) == name.endswith("_image")


def test_suite_errors(tmp_path):
    def write(text):
        p = tmp_path / "s.yaml"
        p.write_text(text)
        return p

    with pytest.raises(ValueError, match="max_stepz"):
        load_suite(write("task: Lift\nmax_stepz: 10\n"))
    with pytest.raises(ValueError, match="unknown task 'Lfit'"):
        load_suite(write("task: Lfit\n"))
    with pytest.raises(ValueError, match="unknown camera 'topview'"):
        load_suite(write("task: Lift\ncameras: [topview]\n"))
    with pytest.raises(ValueError, match="robot"):
        load_suite(write("task: Lift\nrobot: UR5e\n"))
    with pytest.raises(ValueError, match="max_steps"):
        load_suite(write("task: Lift\nmax_steps: 0\n"))
    with pytest.raises(FileNotFoundError):
        load_suite(tmp_path / "missing.yaml")
    s = Suite(task="Lift", cameras=["agentview"])
    assert s.cameras == ("agentview",) and s.env_kwargs()["max_steps"] == 400


def test_a_report_counts_categorical_outcomes_when_the_task_defines_them():
    from robopolicy.eval.report import build_report, to_markdown

    def episode(i, success, outcome):
        e = {"episode": i, "seed": 100 + i, "success": success, "length": 10, "reward": 0.0, "nfe": 1, "video": None}
        return {**e, "outcome": outcome} if outcome else e

    eps = [
        episode(0, True, {"placed": "cued"}),
        episode(1, False, {"placed": "other"}),
        episode(2, False, {"placed": "other"}),
    ]
    kw = dict(
        suite={"name": "s", "task": "LiftCue", "max_steps": 10},
        checkpoint=None,
        policy="p",
        summary=success_summary([e["success"] for e in eps]),
        latency_ms={"p50": 1.0, "p95": 1.0},
        mean_batch=1.0,
        wall_time_s=1.0,
        rollout_time_s=1.0,
        settings={"workers": 1},
    )
    report = build_report(episodes=eps, **kw)
    assert report["outcomes"] == {"placed": {"cued": 1, "other": 2}}
    assert "outcome `placed`: cued 1/3, other 2/3" in to_markdown(report)
    assert "outcomes" not in build_report(episodes=[{**e, "outcome": None} for e in eps], **kw)
