"""End to end on the emulated SO-101 (the ``real`` env; issue 12's last "must show").

lerobot's unmodified SO-101 follower and leader talk to emulated Feetech buses. The test then:

1. records demonstrations with the leader (``record_arm_teleop``, the code behind
   ``robopolicy demos record --driver so101 --teleop so101_leader``);
2. trains a Diffusion Policy on them (``robopolicy train --config configs/train/so101_lowdim.yaml``);
3. brings the daemon up on the arm (``robopolicy daemon``, a separate process opening the
   emulated bus's port), loads the checkpoint, runs an episode, and checks that the arm moved
   and the episode was recorded;
4. starts another episode and e-stops it: the daemon latches ``estopped`` and the arm holds;
5. starts a third and kills the daemon with SIGKILL: the arm keeps holding, the restarted daemon
   comes up idle without moving it, and the store holds the two finished episodes;
6. labels the episodes, and retrains on the daemon's recording.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("lerobot")
pytest.importorskip("scservo_sdk")

from robopolicy.control.drivers import make_driver  # noqa: E402
from robopolicy.control.emulator.feetech import FeetechBusProcess  # noqa: E402
from robopolicy.control.teleop import LerobotLeader, TimedControls, record_arm_teleop  # noqa: E402
from robopolicy.daemon.client import DaemonClient  # noqa: E402
from robopolicy.data.store import EpisodeStore  # noqa: E402
from robopolicy.envs.teleop import ControlEvent  # noqa: E402
from tests.real.test_so101_emulated import MID, start_positions, write_calibration  # noqa: E402
from tests.real.test_so101_teleop_emulated import leader_script  # noqa: E402

pytestmark = [pytest.mark.real]

REPO = Path(__file__).resolve().parents[2]


def body_deg(bus) -> np.ndarray:
    """The emulated follower's body joints [deg] as lerobot reads them."""
    return np.array([(bus.servo(i + 1).present - MID[i]) * 360 / 4095 for i in range(5)])


def robopolicy(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "robopolicy.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def start_daemon(root: Path, port: str, calib: Path) -> tuple[subprocess.Popen, DaemonClient]:
    cfg = yaml.safe_load((REPO / "real" / "so101.yaml").read_text())
    cfg["server"]["token_file"] = str(root / "token")
    cfg["driver"]["options"].update(port=port, robot_id="follower", calibration_dir=str(calib))
    cfg["controller"].update(priority="none", max_ticks=90)
    cfg["recording"] = {"store": str(root / "daemon.zarr"), "runs_dir": str(root / "runs"), "images": True}
    cfg["policy_roots"] = [str(root)]
    cfg["device"] = "cpu"
    (root / "daemon.yaml").write_text(yaml.safe_dump(cfg))
    ready = root / "ready.json"
    ready.unlink(missing_ok=True)
    log = open(root / "daemon.log", "a")  # noqa: SIM115  (the process keeps it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "robopolicy.cli", "daemon", "--config", str(root / "daemon.yaml"), "--port", "0",
         "--ready-file", str(ready)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, (root / "daemon.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the daemon did not come up"
        time.sleep(0.1)
    port_ = json.loads(ready.read_text())["port"]
    return proc, DaemonClient(f"http://127.0.0.1:{port_}", (root / "token").read_text().strip())


def test_record_train_deploy_estop_record_and_retrain_on_the_emulated_so101(tmp_path):
    calib = tmp_path / "calibration"
    write_calibration(calib, "follower")
    write_calibration(calib, "leader")
    demos = tmp_path / "demos.zarr"
    S, E = ControlEvent.START, ControlEvent
    # four demonstrations of 60 ticks (2 s at 30 Hz): the leader waves at 0.5 Hz
    events = []
    for k in range(4):
        t0 = 3 + 70 * k
        events += [(t0, S), (t0 + 60, E.SAVE)]
    events.append((3 + 70 * 4, E.QUIT))
    with (
        FeetechBusProcess(start_positions()) as follower,
        FeetechBusProcess(start_positions(), script=leader_script) as lead,
    ):
        driver = make_driver("so101", port=follower.port, robot_id="follower", calibration_dir=calib)
        leader = LerobotLeader("so101", port=lead.port, teleop_id="leader", calibration_dir=calib)
        report = record_arm_teleop(
            driver, leader, TimedControls(events), demos, device_name="so101_leader", task="wave", operator="test"
        )
        assert report.saved == 4

        # 2. train on the demonstrations
        run = tmp_path / "policy_run"
        robopolicy(
            "train", "--config", "configs/train/so101_lowdim.yaml", "--data", str(demos), "--out", str(run),
            "--no-progress", "num_steps=300", "batch_size=32", "checkpoint_every=300", "warmup_steps=20",
        )  # fmt: skip
        losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert losses[-1] < losses[0] * 0.5, losses

        # 3. the daemon on the arm: idle and holding after start
        proc, c = start_daemon(tmp_path, follower.port, calib)
        try:
            s = c.status()
            assert s["state"] == "idle" and s["driver"]["name"] == "so101" and s["driver"]["connected"]
            assert all(follower.servo(i).torque for i in range(1, 7))
            before = body_deg(follower)
            time.sleep(0.5)
            np.testing.assert_allclose(body_deg(follower), before, atol=0.2)  # idle does not move
            c.load_policy(run)
            c.start(max_ticks=90, task="wave")
            s = c.wait_state(timeout_s=60)
            last = s["last_episode"]
            assert last["end_reason"] == "max_ticks" and last["ticks"] == 90, last
            moved = np.abs(body_deg(follower) - before).max()
            assert moved > 3.0, f"the arm moved only {moved:.2f} deg"
            c.label(True)

            # 4. e-stop mid-episode: latched, the arm holds
            c.start(max_ticks=10_000)
            time.sleep(1.5)
            assert c.status()["state"] == "running"
            c.estop("e2e test")
            s = c.wait_state(("estopped",), timeout_s=30)
            assert s["last_episode"]["faults"][0]["kind"] == "estop"
            held = body_deg(follower)
            time.sleep(0.7)
            np.testing.assert_allclose(body_deg(follower), held, atol=0.5)  # holding, not drifting
            c.label(False)
            assert c.reset()["state"] == "idle"

            # 5. SIGKILL mid-episode: the arm keeps holding, the restart is idle and does not move
            c.start(max_ticks=10_000)
            time.sleep(1.5)
            assert c.status()["state"] == "running"
            proc.kill()
            proc.wait(timeout=30)
            assert all(follower.servo(i).torque for i in range(1, 7)), "torque stays on: the arm holds"
            killed = body_deg(follower)
            proc, c = start_daemon(tmp_path, follower.port, calib)
            s = c.status()
            assert s["state"] == "idle" and s["episode"] is None and s["policy"] is None
            assert s["recording"]["episodes"] == 2  # the killed episode was never written
            time.sleep(0.7)
            np.testing.assert_allclose(body_deg(follower), killed, atol=0.5)  # the restart does not move
            assert not [r for r in c.telemetry()["records"] if r["type"] == "tick"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert all(follower.servo(i).torque for i in range(1, 7)), "the arm keeps holding after the daemon exits"

    # 6. the recording: both finished episodes, labelled, ready to train on
    with EpisodeStore.open(tmp_path / "daemon.zarr") as store:
        assert store.n_episodes == 2
        labels = [m["operator_success"] for m in store.episodes_metadata]
        assert labels == [True, False]
        ep = store.episode(0)
        assert ep["state"].shape == (90, 6) and ep["action"].shape == (90, 6)
        assert np.isfinite(ep["predicted_chunk"][ep["chunk_index"] >= 0]).all()
        assert store.episode_metadata(1)["faults"][0]["kind"] == "estop"
    retrain = tmp_path / "retrain"
    robopolicy(
        "train", "--config", "configs/train/so101_lowdim.yaml", "--data", str(tmp_path / "daemon.zarr"),
        "--out", str(retrain), "--no-progress", "num_steps=20", "batch_size=16", "checkpoint_every=20",
        "warmup_steps=2", "val_ratio=0",
    )  # fmt: skip
    assert (retrain / "latest" / "config.json").is_file()
