"""Reliability round 2 for decoding: an extreme aspect ratio costs what a normal video costs (and normal ones are
decoded exactly as before), and a failure shows ffmpeg's informative lines, not its first one."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from r2 import video

REPO = Path(__file__).resolve().parents[1]


def make(path: Path, size: str, colour: str = "red", seconds: int = 4) -> Path:
    subprocess.run([video.ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=s={size}:r=4:d={seconds}" if colour == "pattern" else
                    f"color=c={colour}:s={size}:r=4:d={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)],
                   check=True, capture_output=True)
    return path


PEAK = textwrap.dedent("""
    import resource, sys
    from r2 import video
    frames = video.decode(sys.argv[1], 0.5)
    print(frames.frames.shape, frames.frames[0, 112, 112].tolist(),
          resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
""")


@pytest.mark.parametrize("size", ["2x8000", "8000x2"])
def test_an_extreme_aspect_ratio_decodes_in_little_memory(tmp_path, size):
    path = make(tmp_path / f"{size}.mp4", size)
    done = subprocess.run([sys.executable, "-c", PEAK, str(path)], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    shape, rgb, peak_mb = done.stdout.rsplit(" ", 1)[0], done.stdout.split("] ")[0], int(done.stdout.split()[-1])
    assert shape.startswith("(2, 224, 224, 3)") and "[25" in rgb  # red
    assert peak_mb < 300, f"ffmpeg peaked at {peak_mb} MB"


def test_normal_aspect_ratios_decode_exactly_as_without_the_guard(tmp_path):
    path = make(tmp_path / "wide.mp4", "400x112", "pattern")  # 3.6:1, just inside the guard
    ours = video.decode(path, 2.0).frames
    plain = subprocess.run([video.ffmpeg_exe(), "-v", "error", "-i", str(path), "-vf",
                            "fps=2,scale=224:224:force_original_aspect_ratio=increase:flags=bicubic,crop=224:224",
                            "-f", "rawvideo", "-pix_fmt", "rgb24", "-an", "-sn", "pipe:"], capture_output=True,
                           check=True).stdout
    np.testing.assert_array_equal(ours, np.frombuffer(plain, np.uint8).reshape(ours.shape))


def test_a_failure_shows_what_ffmpeg_found(tmp_path):
    path = tmp_path / "text.mp4"
    path.write_text("this is not a video\n" * 40)
    with pytest.raises(video.VideoDecodeError) as info:
        video.decode(path, 0.5)
    reason = info.value.reason
    assert "Invalid data found when processing input" in reason and "Error opening input file" not in reason
