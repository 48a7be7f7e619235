"""SPEC §4 targets against hand-computed cases."""
import pytest
import torch

from r2.targets import clean_windows, point_targets
from tests.helpers import layout


def positives(cls, points, strides, b, s):
    """Frame indices of the positive points of sample b on the level of stride s."""
    on = (strides == s) & cls[b].bool()
    return points[on].int().tolist()


def reg_at(reg, points, strides, b, s, x):
    i = int(((strides == s) & (points == x)).nonzero()[0, 0])
    return reg[b, i].tolist()


class TestCleanWindows:
    def test_in_range_window_only_converted_to_frames(self):
        out = clean_windows([[2.0, 6.0]], n_frames=15, fps=0.5)
        assert out.tolist() == [[1.0, 3.0]]
        assert out.dtype == torch.float32

    def test_clamped_to_video_length(self):
        # video is 15 frames / 0.5 fps = 30 s long
        out = clean_windows([[-4.0, 10.0], [20.0, 44.0]], n_frames=15, fps=0.5)
        assert out.tolist() == [[0.0, 5.0], [10.0, 15.0]]

    def test_reversed_window_swapped(self):
        assert clean_windows([[10.0, 4.0]], n_frames=15, fps=0.5).tolist() == [[2.0, 5.0]]

    def test_sub_frame_window_becomes_one_frame_around_centre(self):
        # [10.1, 10.2] s at 0.5 fps: centre 10.15 s -> [9.15, 11.15] s -> frames [4.575, 5.575]
        out = clean_windows([[10.1, 10.2]], n_frames=15, fps=0.5)
        assert out[0].tolist() == pytest.approx([4.575, 5.575], abs=1e-5)
        assert float(out[0, 1] - out[0, 0]) == pytest.approx(1.0, abs=1e-6)

    def test_sub_frame_window_near_the_end_stays_inside(self):
        # [29.5, 31] s clamps to [29.5, 30] (0.5 s < one 2 s frame); centre kept 1 s inside -> [28, 30] s
        assert clean_windows([[29.5, 31.0]], n_frames=15, fps=0.5).tolist() == [[14.0, 15.0]]

    def test_windows_fully_outside_become_first_or_last_frame(self):
        out = clean_windows([[40.0, 50.0], [-5.0, -1.0]], n_frames=15, fps=0.5)
        assert out.tolist() == [[14.0, 15.0], [0.0, 1.0]]

    def test_bad_input_is_loud(self):
        with pytest.raises(ValueError, match="pairs"):
            clean_windows([[1.0, 2.0, 3.0]], n_frames=15, fps=0.5)
        with pytest.raises(ValueError, match="fps"):
            clean_windows([[1.0, 2.0]], n_frames=15, fps=0.0)


class TestPointTargets:
    def test_single_window_every_level_by_hand(self):
        points, strides, mask = layout(16, [16])
        cls, reg = point_targets([torch.tensor([[4.0, 8.0]])], points, strides, mask)
        # GT [4, 8], centre 6.  s=1: centre window [4.5, 7.5] -> x in {5, 6, 7}; max r = 3, 2, 3 vs range [0, 2]
        assert positives(cls, points, strides, 0, 1) == [6]
        assert reg_at(reg, points, strides, 0, 1, 6) == [2.0, 2.0]
        # s=2: window [4, 8] -> x in {4, 6, 8}; max r = 4 (upper edge), 2 (lower edge), 4 -> all in [2, 4]
        assert positives(cls, points, strides, 0, 2) == [4, 6, 8]
        assert reg_at(reg, points, strides, 0, 2, 4) == [0.0, 2.0]
        assert reg_at(reg, points, strides, 0, 2, 6) == [1.0, 1.0]
        assert reg_at(reg, points, strides, 0, 2, 8) == [2.0, 0.0]
        # s=4: x in {4, 8}, max r = 4 = lower edge of [4, 8]
        assert positives(cls, points, strides, 0, 4) == [4, 8]
        assert reg_at(reg, points, strides, 0, 4, 4) == [0.0, 1.0]
        # s=8: x = 8 has max r = 4 < 8
        assert positives(cls, points, strides, 0, 8) == []
        assert int(cls.sum()) == 6
        assert torch.all(reg[~cls.bool()] == 0)

    def test_centre_sampling_radius(self):
        points, strides, mask = layout(48, [48])
        gt = [torch.tensor([[0.0, 40.0]])]
        cls, reg = point_targets(gt, points, strides, mask)
        # s=8: centre 20 +- 12 -> [8, 32]. x=0 and x=40 lie inside the GT with max r = 40 in [8, inf) but outside
        # the centre window, so they are negative.
        assert positives(cls, points, strides, 0, 8) == [8, 16, 24, 32]
        assert reg_at(reg, points, strides, 0, 8, 8) == [1.0, 4.0]
        wide, _ = point_targets(gt, points, strides, mask, radius=3.0)  # window [-4, 44] -> the whole GT
        assert positives(wide, points, strides, 0, 8) == [0, 8, 16, 24, 32, 40]

    def test_shortest_window_wins(self):
        points, strides, mask = layout(16, [16])
        # the long GT [2, 10] is listed first; at s=2, x=6 qualifies for both (max r 4 and 2) -> the short one
        cls, reg = point_targets([torch.tensor([[2.0, 10.0], [4.0, 8.0]])], points, strides, mask)
        assert reg_at(reg, points, strides, 0, 2, 6) == [1.0, 1.0]
        # x=4 only qualifies for [4, 8] (for [2, 10] max r = 6 > 4)
        assert reg_at(reg, points, strides, 0, 2, 4) == [0.0, 2.0]
        # s=4, x=8: [2, 10] gives r=(6, 2), max 6 in [4, 8]; [4, 8] gives (4, 0), max 4 -> shorter one
        assert reg_at(reg, points, strides, 0, 4, 8) == [1.0, 0.0]
        _, reg_long = point_targets([torch.tensor([[2.0, 10.0]])], points, strides, mask)
        assert reg_at(reg_long, points, strides, 0, 4, 8) == [1.5, 0.5]

    def test_invalid_points_never_positive(self):
        points, strides, mask = layout(16, [16, 10])
        gt = torch.tensor([[6.0, 10.0]])
        cls, reg = point_targets([gt, gt], points, strides, mask)
        # s=2: centre 8, window [6, 10] -> x in {6, 8, 10}, all with max r = 4. Sample 1 has 10 frames, so its
        # stride-2 points are valid up to x = 8 ((p + 1) * 2 <= 10).
        assert positives(cls, points, strides, 0, 2) == [6, 8, 10]
        assert positives(cls, points, strides, 1, 2) == [6, 8]
        assert not bool((cls.bool() & ~mask).any())

    def test_batch_rows_are_independent_and_empty_windows_allowed(self):
        points, strides, mask = layout(16, [16, 16])
        cls, reg = point_targets([torch.tensor([[4.0, 8.0]]), torch.zeros(0, 2)], points, strides, mask)
        alone, _ = point_targets([torch.tensor([[4.0, 8.0]])], points, strides, mask[:1])
        assert torch.equal(cls[0], alone[0])
        assert cls[1].sum() == 0

    def test_stride_without_range_is_loud(self):
        points, strides, mask = layout(32, [32], strides=(1, 16))
        with pytest.raises(ValueError, match="regression range"):
            point_targets([torch.tensor([[4.0, 8.0]])], points, strides, mask)
