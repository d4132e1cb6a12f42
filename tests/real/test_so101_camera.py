"""A real lerobot camera on the emulated SO-101: lerobot's ``OpenCVCamera`` reads a generated video
(64x48, 30 fps, a known pattern per frame) and our ``so101`` driver returns its frames as
``image.front`` (the ``real`` env; skipped where lerobot or cv2 is not importable).

The video is a YUV4MPEG2 stream written into a FIFO at 30 fps, not a regular file: lerobot's
camera thread reads its source as fast as OpenCV decodes it and dies at the end of a file (11 read
failures), so a regular file lasts a few milliseconds (pinned by the last test). A FIFO is paced
by its writer, as a camera is by its sensor. The frames are grey levels (no chroma), so decoding
is exact up to FFmpeg's limited-range YUV to RGB rounding: ``round((Y - 16) * 255 / 219)``, +-1.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lerobot")
pytest.importorskip("scservo_sdk")
cv2 = pytest.importorskip("cv2")

from robopolicy.control.drivers import make_driver  # noqa: E402
from robopolicy.control.emulator.cli import so101_calibration, so101_positions  # noqa: E402
from robopolicy.control.emulator.feetech import FeetechBusProcess  # noqa: E402

pytestmark = [pytest.mark.real]

W, H, FPS = 64, 48, 30


def luma(k: int) -> np.ndarray:
    """Frame ``k``'s Y plane: the top half at a level that steps with k, the bottom half black
    with a white column at ``k % W``."""
    y = np.full((H, W), 16, np.uint8)
    y[: H // 2] = 16 + 5 * (k % 44)
    y[H // 2 :, k % W] = 235
    return y


def expected_rgb(k: int) -> np.ndarray:
    """Frame ``k`` as RGB after limited-range (BT.601) decoding: grey, so all channels equal."""
    g = np.clip(np.round((luma(k).astype(np.float64) - 16) * 255 / 219), 0, 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=2)


class Y4MWriter(threading.Thread):
    """Writes frames 0, 1, 2, ... into a FIFO at ``FPS`` as a YUV4MPEG2 (4:4:4) stream."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path, self.written, self.stop = path, 0, threading.Event()

    def run(self) -> None:
        with open(self.path, "wb") as f:  # blocks until the camera opens the FIFO
            f.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C444\n".encode())
            t0 = time.monotonic()
            chroma = np.full((2, H, W), 128, np.uint8).tobytes()
            while not self.stop.is_set():
                try:
                    f.write(b"FRAME\n" + luma(self.written).tobytes() + chroma)
                    f.flush()
                except BrokenPipeError:
                    return
                self.written += 1
                time.sleep(max(0.0, t0 + self.written / FPS - time.monotonic()))

    def close(self) -> None:
        self.stop.set()
        if self.is_alive():  # still blocked opening the FIFO: open its other end
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self.join(timeout=2.0)
            os.close(fd)


def frame_index(image: np.ndarray, written: int) -> int:
    """The frame ``image`` is (within +-1 per channel), among the first ``written``."""
    matches = [k for k in range(written) if np.abs(image.astype(int) - expected_rgb(k)).max() <= 1]
    assert len(matches) == 1, (matches, image[0, 0], written)
    return matches[0]


def test_a_lerobot_camera_reads_a_video_through_the_driver(tmp_path):
    fifo = tmp_path / "front.y4m"
    os.mkfifo(fifo)
    cal = tmp_path / "calibration"
    cal.mkdir()
    (cal / "follower.json").write_text(json.dumps(so101_calibration()))
    camera = {"type": "opencv", "index_or_path": str(fifo), "width": W, "height": H, "fps": FPS}
    writer = Y4MWriter(fifo)
    writer.start()
    with FeetechBusProcess(so101_positions()) as emu:
        drv = make_driver("so101", port=emu.port, calibration_dir=cal, cameras={"front": camera})
        shapes = drv.observation_shapes()  # known before connecting
        assert shapes["image.front"] == ((H, W, 3), np.dtype(np.uint8))
        try:
            drv.connect()
            seen = []
            for _ in range(8):
                time.sleep(0.1)
                r = drv.read()
                image = r.obs["image.front"]
                assert image.dtype == np.uint8 and image.shape == (H, W, 3)
                assert r.obs["joint_pos"].shape == (5,)
                seen.append(frame_index(image, writer.written))
        finally:
            drv.disconnect()
            writer.close()
    assert all(b > a for a, b in zip(seen, seen[1:])), seen  # new frames at every read, in order
    assert 2 <= np.median(np.diff(seen)) <= 4, seen  # about 3 frames per 0.1 s at 30 fps


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the camera thread's end
def test_a_regular_video_file_does_not_last_as_a_lerobot_camera(tmp_path):
    """What makes the test above use a FIFO (lerobot 0.4.4's ``OpenCVCamera``)."""
    from lerobot.cameras.opencv import OpenCVCamera, OpenCVCameraConfig

    path = tmp_path / "front.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), FPS, (W, H))
    for k in range(90):
        out.write(cv2.cvtColor(expected_rgb(k), cv2.COLOR_RGB2BGR))
    out.release()
    sized = OpenCVCamera(OpenCVCameraConfig(index_or_path=path, width=W, height=H, fps=FPS))
    with pytest.raises(RuntimeError, match="failed to set capture_width"):  # VideoCapture.set is False on a file
        sized.connect()
    plain = OpenCVCamera(OpenCVCameraConfig(index_or_path=path, warmup_s=0))
    plain.connect()  # opens, then its thread reads the 90 frames at decode speed and stops at the end
    time.sleep(0.5)
    with pytest.raises(RuntimeError, match="read thread is not running"):
        plain.read_latest()
