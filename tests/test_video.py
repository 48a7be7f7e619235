"""r2.video: frame counts and timestamps, centre crop, colours, failures, shell-safe names, chunking, prefetch."""
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from r2.video import VideoDecodeError, decode, ffmpeg_exe, iter_decode, prefetch


def _make(path: Path, source: str, *extra: str) -> Path:
    """Encode a lavfi source into `path` (argument list, no shell)."""
    cmd = [ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, *extra, str(path)]
    subprocess.run(cmd, check=True, capture_output=True)
    return path


def _h264(path: Path, source: str, *extra: str) -> Path:
    return _make(path, source, "-c:v", "libx264", "-pix_fmt", "yuv444p", "-qp", "0", *extra)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    out = {}
    for seconds in (4, 6, 7, 10):
        out[f"test{seconds}"] = _h264(d / f"test{seconds}.mp4", f"testsrc=s=64x48:r=25:d={seconds}")
    out["solid"] = _h264(d / "solid.mp4", "color=c=0x3366CC:s=64x48:r=10:d=2")
    # 320x240 (4:3): red|yellow bands at the left, yellow|blue at the right, green centre. Scaling 240 -> 224
    # makes it 299 wide and the centre crop drops ~40 source px per side: the outer 30 px bands (red, blue)
    # must vanish, the inner yellow bands must survive at the crop's edges.
    bands = (
        "color=c=0x008000:s={w}x{h}:r=10:d=2,"
        "drawbox=x=0:y=0:w={a}:h={b}:color=0xFF0000:t=fill,drawbox={c1}:color=0xFFFF00:t=fill,"
        "drawbox={c2}:color=0xFFFF00:t=fill,drawbox={c3}:color=0x0000FF:t=fill"
    )
    out["landscape"] = _h264(d / "landscape.mp4", bands.format(
        w=320, h=240, a=30, b=240, c1="x=30:y=0:w=30:h=240", c2="x=260:y=0:w=30:h=240", c3="x=290:y=0:w=30:h=240"))
    out["portrait"] = _h264(d / "portrait.mp4", bands.format(
        w=240, h=320, a=240, b=30, c1="x=0:y=30:w=240:h=30", c2="x=0:y=260:w=240:h=30", c3="x=0:y=290:w=240:h=30"))
    out["one_frame"] = _h264(d / "one_frame.mp4", "testsrc=s=64x48:r=25", "-frames:v", "1")
    out["short"] = _h264(d / "short.mp4", "testsrc=s=64x48:r=25:d=0.5")
    out["audio"] = _make(d / "audio.mp4", "sine=d=2", "-c:a", "aac")
    full = _h264(d / "full.mp4", "testsrc=s=64x48:r=25:d=20", "-movflags", "+faststart")
    out["truncated"] = d / "truncated.mp4"  # index at the front: the first half still decodes
    out["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    no_index = _h264(d / "no_index.mp4", "testsrc=s=64x48:r=25:d=20")
    out["truncated_no_index"] = d / "truncated_no_index.mp4"  # index at the end: cut off, nothing decodes
    out["truncated_no_index"].write_bytes(no_index.read_bytes()[: no_index.stat().st_size // 2])
    return out


@pytest.mark.parametrize("seconds,fps,expected", [
    (4, 0.5, 2), (4, 1, 4), (4, 2, 8), (6, 0.5, 3), (6, 2, 12), (10, 0.5, 5), (10, 1, 10), (10, 2, 20),
    (7, 0.5, 4),  # 3.5 samples: the fps filter rounds half up
])
def test_frame_count_times_and_shape(clips, seconds, fps, expected):
    out = decode(clips[f"test{seconds}"], fps)
    assert out.frames.shape == (expected, 224, 224, 3) and out.frames.dtype == np.uint8
    np.testing.assert_array_equal(out.times, np.arange(expected) / fps)
    assert out.times.dtype == np.float64
    assert out.duration == pytest.approx(seconds) and not out.truncated and out.fps == fps


def test_other_size(clips):
    assert decode(clips["test4"], 1, size=112).frames.shape == (4, 112, 112, 3)


def test_solid_colour_decodes_to_its_rgb(clips):
    frames = decode(clips["solid"], 1).frames.astype(int)
    assert np.abs(frames - np.array([0x33, 0x66, 0xCC])).max() <= 3


@pytest.mark.parametrize("name,axis", [("landscape", 1), ("portrait", 0)])
def test_short_side_scaled_then_centre_cropped(clips, name, axis):
    frame = decode(clips[name], 1).frames[0].astype(int)  # (224, 224, 3)
    line = frame[112, :] if axis == 1 else frame[:, 112]  # across the bands, (224, 3)
    red, blue = np.array([255, 0, 0]), np.array([0, 0, 255])
    yellow, green = np.array([255, 255, 0]), np.array([0, 128, 0])
    assert np.abs(line - red).max(axis=1).min() > 100  # outer bands cropped away entirely
    assert np.abs(line - blue).max(axis=1).min() > 100
    assert np.abs(line[:8] - yellow).max() <= 10 and np.abs(line[-8:] - yellow).max() <= 10  # inner bands kept
    assert np.abs(line[60:164] - green).max() <= 10  # centre untouched
    # ~18.7 px of yellow on each side (20 source px × 224/240): symmetric crop, no squash
    n_left = int((np.abs(line[:40] - yellow).max(axis=1) <= 40).sum())
    n_right = int((np.abs(line[-40:] - yellow).max(axis=1) <= 40).sum())
    assert 16 <= n_left <= 21 and 16 <= n_right <= 21


@pytest.mark.parametrize("fps", [0.5, 1, 2])
def test_single_frame_video_gives_one_frame(clips, fps):
    out = decode(clips["one_frame"], fps)
    assert out.frames.shape == (1, 224, 224, 3) and out.times.tolist() == [0.0]


def test_video_shorter_than_a_period_gives_one_frame(clips):
    out = decode(clips["short"], 0.5)  # 0.5 s at one frame per 2 s
    assert out.frames.shape[0] == 1 and out.duration == pytest.approx(0.5, abs=0.05)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(VideoDecodeError, match=r"nope\.mp4: file not found"):
        decode(tmp_path / "nope.mp4", 1)
    (tmp_path / "empty.mp4").touch()
    with pytest.raises(VideoDecodeError, match=r"empty\.mp4: file is empty"):
        decode(tmp_path / "empty.mp4", 1)


def test_text_file_named_mp4(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    with pytest.raises(VideoDecodeError, match=r"notes\.mp4: ffmpeg cannot read it") as err:
        decode(path, 1)
    assert err.value.path == str(path) and "\n" not in str(err.value)


def test_audio_only_file(clips):
    with pytest.raises(VideoDecodeError, match=r"audio\.mp4: no video stream"):
        decode(clips["audio"], 1)


def test_truncated_file_returns_the_frames_before_the_cut(clips):
    out = decode(clips["truncated"], 1)
    assert 1 <= out.frames.shape[0] < 20 and out.truncated
    assert out.duration == pytest.approx(out.frames.shape[0] / 1)  # what decoded, not the header's 20 s
    np.testing.assert_array_equal(out.frames, decode(clips["test10"], 1).frames[: out.frames.shape[0]])


def test_truncated_file_without_index_is_a_clear_error(clips):
    with pytest.raises(VideoDecodeError, match=r"truncated_no_index\.mp4: ffmpeg cannot read it: moov atom"):
        decode(clips["truncated_no_index"], 1)


def test_shell_metacharacters_in_file_name(clips, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = tmp_path / "a clip; $(touch pwned) `touch pwned2` 'q\" -x:y.mp4"
    name.write_bytes(clips["test4"].read_bytes())
    assert decode(name, 1).frames.shape[0] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [name.name]


def test_iter_decode_chunks_concatenate_to_decode(clips):
    stream = iter_decode(clips["test10"], 2, chunk_frames=3)
    chunks = list(stream)
    assert [len(f) for f, _ in chunks] == [3] * 6 + [2]
    whole = decode(clips["test10"], 2)
    np.testing.assert_array_equal(np.concatenate([f for f, _ in chunks]), whole.frames)
    np.testing.assert_array_equal(np.concatenate([t for _, t in chunks]), whole.times)
    assert stream.n_frames == 20 and stream.duration == whole.duration


def test_iter_decode_stops_ffmpeg_when_closed_early(clips):
    it = iter(iter_decode(clips["test10"], 2, chunk_frames=2))
    frames, times = next(it)
    assert frames.shape == (2, 224, 224, 3) and times.tolist() == [0.0, 0.5]
    it.close()  # kills ffmpeg and joins its stderr reader; must not hang


def test_prefetch_keeps_order_and_delivers_exceptions():
    def fn(i):
        time.sleep(0.01 * (5 - i))  # later items finish faster
        if i == 2:
            raise ValueError("bad item 2")
        return i * i

    out = list(prefetch(range(5), fn, depth=3))
    assert [item for item, _ in out] == [0, 1, 2, 3, 4]
    assert [r for i, r in out if i != 2] == [0, 1, 9, 16]
    assert isinstance(out[2][1], ValueError) and str(out[2][1]) == "bad item 2"


def test_prefetch_works_ahead_while_the_consumer_is_busy():
    started = {i: threading.Event() for i in range(3)}

    def fn(i):
        started[i].set()
        return i

    for item, _ in prefetch(range(3), fn, depth=1):
        if item == 0:
            # Holding item 0, the next item must be started without us asking for it.
            assert started[1].wait(timeout=10)


def test_prefetch_close_early_does_not_hang():
    import itertools

    calls = []

    def fn(i):
        calls.append(i)
        time.sleep(0.02)
        return i

    gen = prefetch(itertools.count(), fn, depth=2)  # endless items
    assert next(gen) == (0, 0)
    gen.close()
    assert not any(t.name == "r2-prefetch" and t.is_alive() for t in threading.enumerate())
    n = len(calls)
    time.sleep(0.1)
    assert len(calls) == n <= 4  # stopped: at most the queue depth + the one in flight were computed


def test_prefetch_raises_when_items_iterable_fails():
    def items():
        yield 1
        raise OSError("listing failed")

    gen = prefetch(items(), lambda i: i)
    assert next(gen) == (1, 1)
    with pytest.raises(OSError, match="listing failed"):
        next(gen)
