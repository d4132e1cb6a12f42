"""The labelled grid video: tile layout, held last frames, SUCCESS/FAILURE banners."""

from __future__ import annotations

import numpy as np
import pytest

from robopolicy.eval.video import (
    FAILURE_RGB,
    SUCCESS_RGB,
    GridTile,
    grid_layout,
    render_banner,
    tile_label,
    write_grid_mp4,
    write_mp4,
)

TILE, BANNER = 160, 32  # tiles >= 160 px wide get 32 px banners


def _episode(value: int, length: int) -> list[np.ndarray]:
    """Uniform gray frames, a bright square whose row encodes the frame index (to see motion)."""
    frames = []
    for t in range(length):
        f = np.full((TILE, TILE, 3), value, dtype=np.uint8)
        f[8 * t : 8 * t + 8, :8] = 255
        frames.append(f)
    return frames


def _read(path) -> list[np.ndarray]:
    import imageio.v2 as imageio

    return [np.asarray(f) for f in imageio.mimread(str(path))]


def _cell(frame: np.ndarray, i: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(banner, image) of tile ``i``."""
    r, c = divmod(i, cols)
    y, x = r * (BANNER + TILE), c * TILE
    return frame[y : y + BANNER, x : x + TILE], frame[y + BANNER : y + BANNER + TILE, x : x + TILE]


def test_grid_layout_and_labels():
    assert [grid_layout(n) for n in (1, 2, 3, 4, 5, 9, 10)] == [(1, 1), (1, 2), (2, 2), (2, 2), (2, 3), (3, 3), (3, 4)]
    with pytest.raises(ValueError):
        grid_layout(0)
    assert tile_label(True, 100000) == "SUCCESS  seed 100000"
    assert tile_label(False, 7) == "FAILURE  seed 7"


def test_grid_video_tiles_banners_and_held_frames(tmp_path):
    # episode 1 comes from an MP4 (the runner's path), the others from frames
    mp4 = write_mp4(tmp_path / "ep1.mp4", _episode(120, 8))
    tiles = [
        GridTile(_episode(60, 5), success=True, seed=100000),
        GridTile(mp4, success=False, seed=100001),
        GridTile(_episode(200, 3), success=True, seed=100002),
    ]
    out = write_grid_mp4(tmp_path / "videos" / "grid.mp4", tiles, fps=20)
    frames = _read(out)
    rows, cols = grid_layout(3)
    assert (rows, cols) == (2, 2)
    assert len(frames) == 8  # the longest episode
    assert frames[0].shape == (rows * (BANNER + TILE), cols * TILE, 3)

    values = [60, 120, 200]
    for t in (0, 2, 7):
        for i, v in enumerate(values):
            _, img = _cell(frames[t], i, cols)
            assert abs(float(np.median(img)) - v) < 6, (t, i)
        _, empty = _cell(frames[t], 3, cols)
        assert empty.mean() < 5  # the fourth cell is empty: black
    # the marker moves while an episode runs and stays put once it ended (last frame held)
    marker_row = [[int(np.argmax(_cell(f, i, cols)[1][:, :8].mean(axis=(1, 2)))) for f in frames] for i in range(3)]
    assert marker_row[1][7] > marker_row[1][0]  # 8 frames: moving to the end
    assert marker_row[2][2:] == [marker_row[2][2]] * 6  # 3 frames: frame 2 held from then on
    assert marker_row[0][4:] == [marker_row[0][4]] * 4

    # banners: green for successes, red for the failure, each with white text
    for i, tile in enumerate(tiles):
        banner, _ = _cell(frames[0], i, cols)
        bg = np.median(banner.reshape(-1, 3), axis=0)
        want = SUCCESS_RGB if tile.success else FAILURE_RGB
        assert np.abs(bg - np.array(want)).max() < 30, (i, bg)
        assert (banner.min(axis=-1) > 200).mean() > 0.03, i  # white text pixels
    s_banner, f_banner = _cell(frames[0], 0, cols)[0], _cell(frames[0], 1, cols)[0]
    assert s_banner[..., 1].mean() > s_banner[..., 0].mean() + 40  # green
    assert f_banner[..., 0].mean() > f_banner[..., 1].mean() + 40  # red
    # the texts differ: SUCCESS vs FAILURE (and the seed) give different white-pixel masks
    text = [(render_banner(tile_label(t.success, t.seed), t.success, TILE, BANNER).min(-1) > 200) for t in tiles]
    assert (text[0] != text[1]).mean() > 0.02 and (text[0] != text[2]).any()


def test_grid_scales_wide_grids_and_rejects_empty(tmp_path):
    tiles = [GridTile(_episode(100, 2), success=i % 2 == 0, seed=i) for i in range(4)]
    frames = _read(write_grid_mp4(tmp_path / "g.mp4", tiles, max_width=192))
    assert frames[0].shape == (2 * (16 + 96), 2 * 96, 3)  # 160 px tiles scaled to 96 px, 16 px banners
    with pytest.raises(ValueError, match="no episodes"):
        write_grid_mp4(tmp_path / "none.mp4", [])
