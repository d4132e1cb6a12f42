"""MP4 writing (imageio + its bundled ffmpeg) and the labelled side-by-side grid of episodes.

:func:`write_grid_mp4` tiles several episode videos into one: ``columns = ceil(sqrt(n))``
tiles per row, row-major in the given order, each tile a coloured banner above the episode's
frames. The banner says ``SUCCESS`` (green) or ``FAILURE`` (red) and the episode seed. The grid
lasts as long as the longest episode; a shorter episode holds its last frame. Empty cells of
the last row are black.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

SUCCESS_RGB = (0, 150, 0)
"""Banner colour of a successful episode."""
FAILURE_RGB = (200, 0, 0)
"""Banner colour of a failed episode."""
TEXT_RGB = (255, 255, 255)
_BLOCK = 16  # H.264 macro block: keep every dimension a multiple of it (no rescaling by imageio)


def write_mp4(path: str | Path, frames: Sequence[np.ndarray], fps: int = 20) -> Path:
    """Write uint8 ``(H, W, 3)`` frames as an H.264 MP4; returns the path."""
    import imageio.v2 as imageio

    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=7, macro_block_size=16) as w:
        for f in frames:
            w.append_data(np.asarray(f, dtype=np.uint8))
    return path


@dataclasses.dataclass(frozen=True)
class GridTile:
    """One episode of a grid video: its frames (an MP4 path or the frames) and its outcome."""

    source: str | Path | Sequence[np.ndarray]
    success: bool
    seed: int


def grid_layout(n: int) -> tuple[int, int]:
    """``(rows, columns)`` of a grid of ``n`` tiles: ``ceil(sqrt(n))`` columns, as many rows as needed."""
    if n < 1:
        raise ValueError(f"a grid needs at least one tile, got {n}")
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def tile_label(success: bool, seed: int) -> str:
    """The banner text of a tile, e.g. ``SUCCESS  seed 100000``."""
    return f"{'SUCCESS' if success else 'FAILURE'}  seed {seed}"


def render_banner(text: str, success: bool, width: int, height: int) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 banner: ``text`` in white on green (success) or red (failure)."""
    import cv2

    banner = np.empty((height, width, 3), dtype=np.uint8)
    banner[:] = SUCCESS_RGB if success else FAILURE_RGB
    font, thickness = cv2.FONT_HERSHEY_SIMPLEX, 1 if height < 24 else 2
    scale = 0.6 * height / 32
    (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    if tw > width - 8:  # shrink to fit the tile
        scale *= (width - 8) / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, thickness)
    origin = (max(4, (width - tw) // 2), (height + th) // 2)
    cv2.putText(banner, text, origin, font, scale, TEXT_RGB, thickness, cv2.LINE_AA)
    return banner


def _frames(source: str | Path | Sequence[np.ndarray]) -> Iterator[np.ndarray]:
    if isinstance(source, (str, Path)):
        import imageio.v2 as imageio

        with imageio.get_reader(str(source)) as reader:
            yield from reader
    else:
        yield from source


def _fit(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2

    frame = np.asarray(frame, dtype=np.uint8)[..., :3]
    if frame.shape[:2] != (height, width):
        frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    return frame


def write_grid_mp4(path: str | Path, tiles: Sequence[GridTile], fps: int = 20, max_width: int = 1536) -> Path:
    """Write the episodes of ``tiles`` side by side as one labelled MP4 (see the module doc); returns the path.

    Tiles keep the size of the first episode's frames, scaled down (to multiples of 16
    pixels) when ``columns * width`` would exceed ``max_width``; other frame sizes are
    resized to it. Banners are 32 pixels high (16 for tiles narrower than 160 pixels).
    """
    import imageio.v2 as imageio

    if len(tiles) == 0:
        raise ValueError(f"no episodes to write to the grid {path}")
    rows, cols = grid_layout(len(tiles))
    streams = [_frames(t.source) for t in tiles]
    try:
        last: list[np.ndarray | None] = [next(s, None) for s in streams]
        for t, f in zip(tiles, last):
            if f is None:
                raise ValueError(f"episode video {t.source} has no frames")
        h0, w0 = last[0].shape[:2]
        scale = min(1.0, max_width / (cols * w0))
        tw = max(_BLOCK, int(w0 * scale) // _BLOCK * _BLOCK)
        th = max(_BLOCK, int(h0 * scale) // _BLOCK * _BLOCK)
        bh = 32 if tw >= 160 else 16
        banners = [render_banner(tile_label(t.success, t.seed), t.success, tw, bh) for t in tiles]
        canvas = np.zeros((rows * (bh + th), cols * tw, 3), dtype=np.uint8)
        for i, banner in enumerate(banners):
            r, c = divmod(i, cols)
            canvas[r * (bh + th) : r * (bh + th) + bh, c * tw : (c + 1) * tw] = banner
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with imageio.get_writer(str(path), fps=fps, codec="libx264", quality=7, macro_block_size=_BLOCK) as w:
            frames: list[np.ndarray | None] = last
            while True:
                for i, f in enumerate(frames):
                    if f is not None:  # a new frame; an ended episode keeps its last one on the canvas
                        r, c = divmod(i, cols)
                        y = r * (bh + th) + bh
                        canvas[y : y + th, c * tw : (c + 1) * tw] = _fit(f, tw, th)
                w.append_data(canvas)
                frames = [next(s, None) for s in streams]
                if all(f is None for f in frames):
                    break
    finally:
        for s in streams:
            s.close()
    return path


__all__ = [
    "FAILURE_RGB",
    "SUCCESS_RGB",
    "GridTile",
    "grid_layout",
    "render_banner",
    "tile_label",
    "write_grid_mp4",
    "write_mp4",
]
