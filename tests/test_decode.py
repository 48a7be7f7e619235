"""SPEC §6 decoding against hand-computed windows and saliency; batched == single; output contract."""
import math

import pytest
import torch

from r2.decode import DecodeConfig, decode, decode_config_for, nms, upsample_level


def layout(t: int, n_frames: list[int], strides):
    """(points, point_strides, point_mask, [(s, p) per point]) laid out like the model's outputs."""
    keys = [(s, p) for s in strides for p in range(t // s)]
    points = torch.tensor([float(p * s) for s, p in keys])
    point_strides = torch.tensor([float(s) for s, _ in keys])
    mask = torch.tensor([[(p + 1) * s <= n for s, p in keys] for n in n_frames])  # (B, N)
    return points, point_strides, mask, keys


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def assert_rows(got, want):
    """Nested lists of numbers equal to 1e-6."""
    assert torch.allclose(torch.as_tensor(got, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                          atol=1e-6, rtol=0)


def make_batch(n_frames, fps, duration):
    return {"n_frames": torch.tensor(n_frames), "fps": torch.tensor(fps, dtype=torch.float32),
            "duration": torch.tensor(duration, dtype=torch.float32)}


def hand_case():
    """T=5 frames at 0.5 fps (10 s), strides (1, 2): 5 + 2 points with chosen scores and boundaries."""
    points, strides, mask, _ = layout(5, [5], (1, 2))
    scores = [0.9, 0.2, 0.6, 0.1, 0.05, 0.8, 0.3]  # s=1 at x=0..4, then s=2 at x=0, 2
    bnd = [[0.5, 1.0], [1.0, 1.0], [0.5, 0.5], [1.0, 2.0], [0.5, 0.5], [0.25, 1.0], [0.5, 0.75]]
    outputs = {"class_logits": torch.tensor([[logit(p) for p in scores]]), "boundaries": torch.tensor([bnd]),
               "point_mask": mask, "points": points, "point_strides": strides,
               "saliency": torch.tensor([[1.0, 0.5, -1.0, 0.25, 0.5]])}
    return outputs, make_batch([5], [0.5], [10.0])


def test_hand_case_windows_and_saliency():
    outputs, batch = hand_case()
    (out,) = decode(outputs, batch, DecodeConfig(unit=None, nms=None))
    # window = [x - b_s * s, x + b_e * s] / fps, clamped to [0, 10]:
    #   s=1 x=0 [-1, 2] -> [0, 2]; x=1 [0, 4]; x=2 [3, 5]; x=3 [4, 10]; x=4 [7, 9]
    #   s=2 x=0 [-1, 4] -> [0, 4]; x=2 [2, 7]
    expected = [[0, 2, 0.9], [0, 4, 0.8], [3, 5, 0.6], [2, 7, 0.3], [0, 4, 0.2], [4, 10, 0.1], [7, 9, 0.05]]
    assert len(out["pred_relevant_windows"]) == len(expected)
    for got, want in zip(out["pred_relevant_windows"], expected):
        assert got == pytest.approx(want, abs=1e-5)
    # level scores: s=1 [.9 .2 .6 .1 .05]; s=2 [.8 .3] -> repeated twice, padded with the last -> [.8 .8 .3 .3 .3]
    # max [.9 .8 .6 .3 .3] times the cosine [1 .5 -1 .25 .5]
    assert out["pred_saliency_scores"] == pytest.approx([0.9, 0.4, -0.6, 0.075, 0.15], abs=1e-6)


def test_clamping_to_duration():
    outputs, _ = hand_case()
    (out,) = decode(outputs, make_batch([5], [0.5], [8.0]), DecodeConfig(unit=None, nms=None))
    ends = [w[1] for w in out["pred_relevant_windows"]]
    assert max(ends) == pytest.approx(8.0)
    assert all(0.0 <= w[0] <= w[1] <= 8.0 for w in out["pred_relevant_windows"])


def test_unit_rounding_except_at_duration():
    points, strides, mask, _ = layout(6, [6], (1,))
    # fps 1, duration 6: windows [x - b_s, x + b_e]
    bnd = [[0.0, 0.9], [0.6, 3.0], [0.6, 4.0], [0.1, 3.2], [3.0, 2.5], [0.2, 0.9]]
    # x=0 [0, .9] -> [0, 0]; x=1 [.4, 4] -> [0, 4]; x=2 [1.4, 6] ends at the duration -> kept;
    # x=3 [2.9, 6.2] -> clamped [2.9, 6], not rounded; x=4 [1, 6.5] -> [1, 6] kept; x=5 [4.8, 5.9] -> [4, 6] (round
    # half to even: 4.8/2=2.4 -> 2, 5.9/2=2.95 -> 3)
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    outputs = {"class_logits": torch.tensor([[logit(p) for p in scores]]), "boundaries": torch.tensor([bnd]),
               "point_mask": mask, "points": points, "point_strides": strides, "saliency": torch.ones(1, 6)}
    (out,) = decode(outputs, make_batch([6], [1.0], [6.0]), DecodeConfig(unit=2.0, nms=None))
    got = [w[:2] for w in out["pred_relevant_windows"]]
    want = [[0, 0], [0, 4], [1.4, 6], [2.9, 6], [1, 6], [4, 6]]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-5)


def test_top_k_cap():
    points, strides, mask, _ = layout(64, [64], (1, 2, 4, 8))
    n = points.shape[0]  # 64 + 32 + 16 + 8 = 120
    logits = torch.linspace(-3, 3, n)[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    outputs = {"class_logits": logits[None], "boundaries": torch.full((1, n, 2), 0.5), "point_mask": mask,
               "points": points, "point_strides": strides, "saliency": torch.ones(1, 64)}
    (out,) = decode(outputs, make_batch([64], [0.5], [128.0]), DecodeConfig(unit=None, nms=None))
    scores = [w[2] for w in out["pred_relevant_windows"]]
    assert len(scores) == 50
    assert scores == pytest.approx(torch.sigmoid(logits).sort(descending=True).values[:50].tolist(), abs=1e-6)


def test_hard_nms_suppressed_stay_at_tail():
    windows = torch.tensor([[0, 4, 0.9], [0, 4.4, 0.8], [6, 8, 0.7], [0, 3, 0.6], [6, 8.5, 0.5]])
    # A=[0,4] suppresses [0,4.4] (IoU 4/4.4) and [0,3] (IoU .75); [6,8] suppresses [6,8.5] (IoU .8)
    out = nms(windows, "hard", 0.7)
    assert_rows(out.tolist(), [[0, 4, 0.9], [6, 8, 0.7], [0, 4.4, 0.0], [0, 3, 0.0], [6, 8.5, 0.0]])
    # IoU exactly at the threshold is suppressed: [0, 4] vs [0, 5] -> 0.8
    at = nms(torch.tensor([[0, 4, 0.9], [0, 5, 0.8]]), "hard", 0.8)
    assert at[1, 2] == 0
    assert torch.equal(windows, torch.tensor([[0, 4, 0.9], [0, 4.4, 0.8], [6, 8, 0.7], [0, 3, 0.6],
                                              [6, 8.5, 0.5]]))  # input untouched


def test_soft_nms_linear_decay_and_resort():
    windows = torch.tensor([[0, 4, 0.9], [1, 4, 0.8], [10, 12, 0.5], [2, 6, 0.45]])
    out = nms(windows, "soft", 0.7)
    # after [0,4]: [1,4] *= 1 - 3/4 -> 0.2; [10,12] untouched; [2,6] *= 1 - 2/6 -> 0.3
    # after [10,12] (no overlap), [2,6] (0.3) beats [1,4] (0.2): [1,4] *= 1 - 2/5 -> 0.12
    assert_rows(out.tolist(), [[0, 4, 0.9], [10, 12, 0.5], [2, 6, 0.3], [1, 4, 0.12]])


def test_qvhighlights_pipeline_rounds_then_suppresses():
    outputs, batch = hand_case()
    (out,) = decode(outputs, batch, decode_config_for("qvhighlights"))
    # rounded to 2 s (half to even): [0,2] [0,4] [3,5]->[4,4] [2,7]->[2,8] [0,4] [4,10] (ends at 10: kept) [7,9]->[8,8]
    # hard NMS at 0.7: [0,4].8 is kept (IoU with [0,2] = .5), the second [0,4] (.2) is suppressed
    got = out["pred_relevant_windows"]
    assert_rows([w[:2] for w in got], [[0, 2], [0, 4], [4, 4], [2, 8], [4, 10], [8, 8], [0, 4]])
    assert [w[2] for w in got] == pytest.approx([0.9, 0.8, 0.6, 0.3, 0.1, 0.05, 0.0], abs=1e-6)


def test_upsample_level():
    # SPEC §6: floor(T / n) repeats, then the last value: T = 11 at stride 4 has n = 2 positions, 5 repeats each
    assert upsample_level(torch.tensor([1.0, 2.0]), 11).tolist() == [1.0] * 5 + [2.0] * 6
    assert upsample_level(torch.tensor([3.0]), 8).tolist() == [3.0] * 8
    # T = 63 at stride 8: n = 7 positions, 9 repeats each (not 8), nothing left to pad
    assert upsample_level(torch.arange(7.0), 63).tolist() == [float(i) for i in range(7) for _ in range(9)]


def random_sample_outputs(n_frames, t, strides, seed):
    """Padded batch outputs with random values everywhere (padding included) and the lone-sample outputs."""
    g = torch.Generator().manual_seed(seed)
    points, point_strides, mask, keys = layout(t, n_frames, strides)
    b, n = len(n_frames), len(keys)
    batched = {"class_logits": torch.randn(b, n, generator=g) * 2,
               "boundaries": torch.rand(b, n, 2, generator=g) * 3,
               "saliency": torch.rand(b, t, generator=g) * 2 - 1,
               "point_mask": mask, "points": points, "point_strides": point_strides}
    singles = []
    for i, tb in enumerate(n_frames):
        p1, s1, m1, k1 = layout(tb, [tb], strides)
        idx = torch.tensor([keys.index(k) for k in k1])
        singles.append({"class_logits": batched["class_logits"][i:i + 1, idx],
                        "boundaries": batched["boundaries"][i:i + 1, idx],
                        "saliency": batched["saliency"][i:i + 1, :tb],
                        "point_mask": m1, "points": p1, "point_strides": s1})
    return batched, singles


@pytest.mark.parametrize("dataset", ["qvhighlights", "charades", "tacos"])
def test_batched_equals_single(dataset):
    n_frames, fps = [16, 11, 5], [0.5, 1.0, 0.5]
    duration = [32.0, 11.0, 9.3]
    batched, singles = random_sample_outputs(n_frames, 16, (1, 2, 4, 8), seed=1)
    cfg = decode_config_for(dataset)
    together = decode(batched, make_batch(n_frames, fps, duration), cfg)
    for i, single in enumerate(singles):
        (alone,) = decode(single, make_batch([n_frames[i]], [fps[i]], [duration[i]]), cfg)
        assert together[i] == alone


def test_output_contract():
    n_frames = [16, 11, 5]
    duration = [32.0, 22.0, 9.3]
    batched, _ = random_sample_outputs(n_frames, 16, (1, 2, 4, 8), seed=2)
    for dataset in ("qvhighlights", "charades", "ego4d"):
        out = decode(batched, make_batch(n_frames, [0.5] * 3, duration), decode_config_for(dataset))
        assert len(out) == 3
        for pred, n, d in zip(out, n_frames, duration):
            assert len(pred["pred_saliency_scores"]) == n
            scores = [w[2] for w in pred["pred_relevant_windows"]]
            assert scores == sorted(scores, reverse=True)
            assert all(0.0 <= w[0] <= w[1] <= d + 1e-5 for w in pred["pred_relevant_windows"])
            assert all(isinstance(v, float) for w in pred["pred_relevant_windows"] for v in w)


def test_soft_cls_saliency_is_stride_one_sigmoid():
    points, strides, mask, _ = layout(4, [4, 3], (1,))
    logits = torch.tensor([[0.0, 1.0, -1.0, 2.0], [3.0, -2.0, 0.5, 9.0]])
    outputs = {"class_logits": logits, "point_mask": mask, "points": points, "point_strides": strides}
    out = decode(outputs, make_batch([4, 3], [1.0, 1.0], [4.0, 3.0]), decode_config_for("tvsum"))
    assert out[0]["pred_saliency_scores"] == pytest.approx(torch.sigmoid(logits[0]).tolist())
    assert out[1]["pred_saliency_scores"] == pytest.approx(torch.sigmoid(logits[1, :3]).tolist())
    assert "pred_relevant_windows" not in out[0]


def test_decode_config_per_dataset():
    assert decode_config_for("qvhighlights") == DecodeConfig(unit=2.0, nms="hard", nms_iou=0.7, top_k=50)
    assert decode_config_for("charades") == DecodeConfig(unit=0.1, nms="soft")
    assert decode_config_for("tacos") == decode_config_for("ego4d") == DecodeConfig(unit=None, nms="soft")
    assert decode_config_for("youtube").soft_cls
    with pytest.raises(ValueError, match="not supported; available datasets"):
        decode_config_for("kinetics")
    outputs, batch = hand_case()
    del outputs["boundaries"]
    with pytest.raises(KeyError, match="boundaries"):
        decode(outputs, batch, decode_config_for("qvhighlights"))
