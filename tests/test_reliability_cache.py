"""Reliability round 2 on the cache itself: a damaged segment is an error naming the file, at once, on every read
path (index, dataset, preload, verify), whether its writer closed it, was killed, or it shrank under a reader."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from r2.cache import Cache, CacheError, ShardWriter, parts_dir, write_entry
from r2.data import GroundingDataset, Preloaded
from r2.verify import verify

REPO = Path(__file__).resolve().parents[1]
FP = {"clip": "tiny", "clip_sha256": "abc", "layers": [1, 2], "fps": 0.5}
DIMS = {"video_dim": 8, "query_dim": 4, "tokens": 3, "layers": [1, 2]}
N_VIDEOS = 400  # enough chunks that the chunk index spills past the first quarter of the file

# Writes N_VIDEOS 5-frame videos and their queries; "kill" ends the process without closing (status flags stay set).
WRITER = textwrap.dedent("""
    import os, sys
    import numpy as np
    from r2.cache import ShardWriter, write_entry
    fp, dims = {fp!r}, {dims!r}
    records = [dict(qid=i, query=f"q{{i}}", vid=f"v{{i}}", duration=10.0, fps=0.5, relevant_windows=[[2, 6]])
               for i in range({n})]
    write_entry(sys.argv[1], dataset="demo", fingerprint=fp, dims=dims, annotations={{"train": records}})
    w = ShardWriter(sys.argv[1], shard=(0, 1), fingerprint=fp, dims=dims)
    for i in range({n}):
        w.add_video(f"v{{i}}", np.full((5, 2, 3, 8), 1 + i % 7, np.float16), np.arange(5) * 2.0, 10.0, 0.5)
        w.add_query(f"q{{i}}", np.full((4, 2, 4), 0.5, np.float16))
    if sys.argv[2] == "kill":
        os._exit(0)
    w.close()
""").format(fp=FP, dims=DIMS, n=N_VIDEOS)


def _python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter; a hang is a failed test, never a stuck suite."""
    try:
        return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for more than {timeout} s (HDF5 retrying a damaged segment?)")


@pytest.fixture(scope="module", params=["closed", "kill"])
def written(request, tmp_path_factory) -> Path:
    entry = tmp_path_factory.mktemp(f"written-{request.param}") / "x.h5"
    done = _python(WRITER, str(entry), request.param)
    assert done.returncode == 0, done.stderr
    return entry


def _damaged_copy(entry: Path, tmp_path: Path, fraction: float = 0.25) -> tuple[Path, Path]:
    copy = tmp_path / "copy" / entry.name
    subprocess.run(["cp", "-r", str(entry.parent), str(copy.parent)], check=True)
    segment = next(parts_dir(copy).glob("shard-*.h5"))
    os.truncate(segment, int(segment.stat().st_size * fraction))
    return copy, segment


READ_ALL = textwrap.dedent("""
    import sys
    from r2.cache import Cache, CacheError
    try:
        cache = Cache(sys.argv[1])
        for vid in cache.videos:
            cache.video(vid)
    except CacheError as e:
        print(e)
        sys.exit(2)
    print("read every video")
""")


@pytest.mark.parametrize("fraction", [0.25, 0.9])
def test_truncated_segment_is_an_error_naming_the_file_at_once(written, tmp_path, fraction):
    copy, segment = _damaged_copy(written, tmp_path, fraction)
    start = time.time()
    done = _python(READ_ALL, str(copy))
    assert done.returncode == 2, done.stdout + done.stderr
    assert str(segment) in done.stdout and "delete it and re-run extraction" in done.stdout
    assert time.time() - start < 30


def test_verify_of_a_truncated_segment_is_broken_fast(written, tmp_path):
    copy, segment = _damaged_copy(written, tmp_path)
    done = _python("import sys; from r2.verify import main; sys.exit(main(['verify', sys.argv[1], '--no-values']))",
                   str(copy))
    assert done.returncode == 2, done.stdout + done.stderr
    assert segment.name in done.stdout and "BROKEN" in done.stdout and "OK:" not in done.stdout


def test_a_segment_cut_under_a_running_reader_is_an_error_not_zeros(written, tmp_path):
    copy, segment = _damaged_copy(written, tmp_path, fraction=1.0)
    cache = Cache(copy)
    last = f"v{N_VIDEOS - 1}"
    assert cache.video(last).min() == 1 + (N_VIDEOS - 1) % 7  # intact before the cut
    dataset = GroundingDataset(cache, "train", train=False)
    os.truncate(segment, segment.stat().st_size // 2)
    with pytest.raises(CacheError, match=str(segment)):
        cache.video(last)
    with pytest.raises(CacheError, match=str(segment)):
        dataset[len(dataset) - 1]
    with pytest.raises(CacheError, match=str(segment)):
        Preloaded.whole(cache)


def test_garbage_in_a_segment_is_an_error_not_a_hang(written, tmp_path):
    copy, segment = _damaged_copy(written, tmp_path, fraction=1.0)
    data = bytearray(segment.read_bytes())
    half = len(data) // 2
    data[half:] = bytes(len(data) - half)  # same size, the second half zeroed (metadata and chunks)
    segment.write_bytes(bytes(data))
    done = _python(READ_ALL, str(copy))
    assert done.returncode == 2 and str(segment) in done.stdout, done.stdout + done.stderr


def test_a_segment_that_is_not_hdf5_is_named(tmp_path):
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="demo", fingerprint=FP, dims=DIMS, annotations={"train": []})
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        w.add_video("a", np.ones((2, 2, 3, 8), np.float16), np.arange(2) * 2.0, 4.0, 0.5)
    segment = next(parts_dir(entry).glob("shard-*.h5"))
    segment.write_bytes(b"not hdf5 at all")
    with pytest.raises(CacheError, match=f"{segment}: not an HDF5 segment"):
        Cache(entry)
    report = verify(entry)
    assert report.exit_code == 2 and any(segment.name in e for e in report.errors)


def test_an_entry_with_damaged_annotations_is_named(tmp_path):
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="demo", fingerprint=FP, dims=DIMS, annotations={"train": [{"qid": 1}]})
    with h5py.File(entry, "r+") as f:
        del f["annotations"]["train"]
    with pytest.raises(CacheError, match=f"{entry}: cannot read the annotations of split 'train'"):
        Cache(entry).records("train")
    report = verify(entry)
    assert report.exit_code == 2 and any("annotations/train is missing" in e for e in report.errors), report.errors


# A writer caught between reopening its segment and switching to SWMR (as when SIGSTOP lands there): it holds the
# segment open read-write (HDF5's exclusive file lock), and, with "lock", the shard lock as ShardWriter does. It
# closes the segment when its stdin closes (killed instead, it would leave the file's non-SWMR write flags set).
HOLDER = textwrap.dedent("""
    import fcntl, os, sys
    import h5py
    segment, take_lock = sys.argv[1], sys.argv[2] == "lock"
    if take_lock:
        lock = open(segment.rsplit(".", 2)[0] + ".lock", "a+")
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.truncate(0)
        lock.write(f"pid {os.getpid()} on test\\n")
        lock.flush()
    f = h5py.File(segment, "r+", libver="latest")
    print("holding", flush=True)
    sys.stdin.readline()  # until the test closes our stdin
    f.close()
""")


@pytest.mark.parametrize("with_lock", [True, False])
def test_a_segment_a_live_writer_holds_open_is_busy_not_damaged(tmp_path, with_lock):
    """A reader that finds a segment held open for writing says who holds it (the shard lock's pid), or that another
    process holds it; never "delete it", which would destroy a live writer's work (an extractor run beside a stopped
    one said so)."""
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="demo", fingerprint=FP, dims=DIMS, annotations={"train": []})
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        w.add_video("v0", np.ones((5, 2, 3, 8), np.float16), np.arange(5) * 2.0, 10.0, 0.5)
    (segment,) = parts_dir(entry).glob("*.h5")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(segment), "lock" if with_lock else "none"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.monotonic()
        with pytest.raises(CacheError) as e:
            Cache(entry).video("v0")
        assert time.monotonic() - start < 10  # a bounded wait, then the error
        message = str(e.value)
        assert str(segment) in message and "delete" not in message and "\n" not in message
        if with_lock:
            assert f"this shard is being written by pid {holder.pid} on test; wait for it to finish" in message
        else:
            assert "another process holds this cache segment open for writing" in message
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=30)
        finally:
            holder.kill()
    assert holder.returncode == 0
    assert Cache(entry).video("v0").shape == (5, 2, 3, 8)  # the segment itself was never damaged


def test_a_segment_whose_writer_died_while_reopening_it_says_how_to_recover(tmp_path):
    """A writer killed between reopening its segment read-write and switching to SWMR leaves HDF5's non-SWMR 'open
    for writing' flags: no reader may open it. The error says what happened and names both ways out (h5clear -s
    keeps the committed videos; deleting re-extracts them), where it used to say only "delete it"."""
    entry = tmp_path / "x.h5"
    write_entry(entry, dataset="demo", fingerprint=FP, dims=DIMS, annotations={"train": []})
    with ShardWriter(entry, shard=(0, 1), fingerprint=FP, dims=DIMS) as w:
        w.add_video("v0", np.ones((5, 2, 3, 8), np.float16), np.arange(5) * 2.0, 10.0, 0.5)
    (segment,) = parts_dir(entry).glob("*.h5")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(segment), "lock"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    holder.kill()  # killed with the segment open: its flags stay set, its locks go with it
    holder.wait()
    with pytest.raises(CacheError) as e:
        Cache(entry)
    message = str(e.value)
    assert message.startswith(f"{segment}: its writer was killed while reopening it") and "\n" not in message
    assert f"h5clear -s {segment}" in message and "delete it and re-run extraction" in message
