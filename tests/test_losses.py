"""SPEC §5 losses against values computed by hand / numpy, and the §9 empty-column fix."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from r2.losses import Criterion, LossConfig, focal_loss, info_nce_loss, loss_config_for, sampled_nce_loss
from tests.helpers import layout

TAU = 0.07


def make_outputs(n_frames, t, k=2, c=4, strides=(1, 2), boundary=True, seed=0):
    """A small parametrised stand-in for R2Model's outputs: returns (outputs, parameters)."""
    g = torch.Generator().manual_seed(seed)
    b = len(n_frames)
    points, point_strides, point_mask = layout(t, n_frames, strides)
    n = points.shape[0]
    params = {
        "h": torch.randn(b, t, c, generator=g),
        "q": torch.randn(b, c, generator=g),
        "cls": torch.randn(b, n, generator=g),
        "bnd": torch.randn(b, n, 2, generator=g) * 0.3,
        "vcls": torch.randn(b, k, t, c, generator=g),
        "qstep": torch.randn(b, k, c, generator=g),
    }
    params = {name: p.requires_grad_() for name, p in params.items()}
    outputs = {
        "saliency": F.cosine_similarity(params["h"], params["q"][:, None], dim=-1),  # (B, T)
        "class_logits": params["cls"],
        "point_mask": point_mask,
        "points": points,
        "point_strides": point_strides,
        "video_cls": params["vcls"],
        "query_step": params["qstep"],
    }
    if boundary:
        outputs["boundaries"] = params["bnd"].exp()
    return outputs, params


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_focal(x, t):
    p = np_sigmoid(x)
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return ce * (1 - p_t) ** 2


def lse(values):
    return math.log(sum(math.exp(v) for v in values))


def test_focal_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    per = np_focal(logits.numpy().astype(np.float64), target.numpy())
    expected = per[mask.numpy()].sum() / 5
    assert float(focal_loss(logits, target, mask)) == pytest.approx(expected, rel=1e-6)
    # gamma 2 without alpha: a confident correct positive costs almost nothing, (1 - p)^2 * -log p
    p = 1 / (1 + math.exp(-2.0))
    assert per[0, 0] == pytest.approx((1 - p) ** 2 * -math.log(p))


def test_class_and_boundary_terms_by_hand():
    # T=4, strides (1, 2), GT [1, 3] frames: s=1 points x=1,2,3 positive with r/s = (0,2), (1,1), (2,0);
    # s=2: x=2 has max r = 1 < 2 -> negative. Six valid points in all.
    outputs, params = make_outputs([4], 4, strides=(1, 2))
    batch = {"video_mask": torch.ones(1, 4, dtype=torch.bool), "saliency": torch.tensor([[0.0, 1.0, 1.0, 0.0]]),
             "pos_frame": torch.tensor([1]), "windows": [torch.tensor([[1.0, 3.0]])]}
    terms = Criterion(loss_config_for("qvhighlights"))(outputs, batch)
    logits = params["cls"].detach().numpy()[0].astype(np.float64)
    target = np.array([0, 1, 1, 1, 0, 0], dtype=np.float64)
    assert terms["loss_cls"].item() == pytest.approx(np_focal(logits, target).sum() / 6, rel=1e-5)
    pred = np.exp(params["bnd"].detach().numpy()[0].astype(np.float64))
    reg_target = np.array([[0, 2], [1, 1], [2, 0]], dtype=np.float64)
    expected_reg = np.abs(pred[1:4] - reg_target).sum() / (2 * 3)
    assert terms["loss_reg"].item() == pytest.approx(expected_reg, rel=1e-5)


def test_class_loss_ignores_invalid_points():
    outputs, params = make_outputs([4, 2], 4, strides=(1, 2))
    batch = {"video_mask": torch.tensor([[True] * 4, [True, True, False, False]]),
             "saliency": torch.tensor([[0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]),
             "pos_frame": torch.tensor([1, 0]), "windows": [torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])]}
    criterion = Criterion(loss_config_for("qvhighlights"))
    before = criterion(outputs, batch)["loss_cls"]
    with torch.no_grad():
        params["cls"][1, 2:4] += 50.0  # sample 1's stride-1 points at frames 2, 3 are padding
        params["cls"][1, 5] -= 50.0  # and so is its stride-2 point at frame 2
    outputs["class_logits"] = params["cls"]
    assert criterion(outputs, batch)["loss_cls"].item() == pytest.approx(before.item(), rel=1e-6)


NCE_COS = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.8, -0.4]])
NCE_SAL = torch.tensor([[0.2, 0.6, 0.9], [1.0, 0.5, 0.0]])
NCE_MASK = torch.tensor([[True, True, True], [True, True, False]])
NCE_POS = torch.tensor([1, 1])


def nce_by_hand():
    l = (NCE_COS / TAU).double().tolist()
    # sample 0: positive 0.6 -> candidates frames 0, 1 (frame 2 has 0.9). sample 1: positive 0.5 -> only frame 1
    # (frame 0 has 1.0, frame 2 is padding), so its row term is log 1 = 0.
    row = (-(l[0][1] - lse([l[0][0], l[0][1]])) + 0.0) / 2
    # columns at frame 1: candidates of both samples at frame 1
    col = (-(l[0][1] - lse([l[0][1], l[1][1]])) - (l[1][1] - lse([l[0][1], l[1][1]]))) / 2
    return row, col


def test_sampled_nce_row_and_column_by_hand():
    row, col = nce_by_hand()
    both = sampled_nce_loss(NCE_COS, NCE_MASK, NCE_SAL, NCE_POS, TAU, column=True)
    assert both.item() == pytest.approx(row + col, rel=1e-5)
    row_only = sampled_nce_loss(NCE_COS, NCE_MASK, NCE_SAL, NCE_POS, TAU, column=False)
    assert row_only.item() == pytest.approx(row, rel=1e-5)


def test_sampled_nce_excludes_rows_without_candidate():
    # a third sample whose positive sits on padding and whose only frame scores above it: no candidate anywhere
    cos = torch.cat((NCE_COS, torch.tensor([[0.9, -0.9, 0.2]])), dim=0).requires_grad_()
    sal = torch.cat((NCE_SAL, torch.tensor([[1.0, 0.0, 0.0]])))
    mask = torch.cat((NCE_MASK, torch.tensor([[True, False, False]])))
    loss = sampled_nce_loss(cos, mask, sal, torch.tensor([1, 1, 2]), TAU, column=True)
    row, col = nce_by_hand()
    assert loss.item() == pytest.approx(row + col, rel=1e-5)
    loss.backward()
    assert torch.isfinite(cos.grad).all()
    assert torch.all(cos.grad[2] == 0)


def np_info_nce(a, b):
    """Symmetric InfoNCE of matched rows, a and b (M, C) float64."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    s = a @ b.T / TAU
    m = s.shape[0]
    ab = -np.mean([s[i, i] - np.log(np.exp(s[i]).sum()) for i in range(m)])
    ba = -np.mean([s[i, i] - np.log(np.exp(s[:, i]).sum()) for i in range(m)])
    return (ab + ba) / 2


def test_video_and_layer_nce_by_numpy():
    outputs, params = make_outputs([5, 5, 4], 5, k=3, c=4, strides=(1,))
    pos = torch.tensor([3, 0, 2])
    batch = {"video_mask": torch.tensor([[True] * 5, [True] * 5, [True] * 4 + [False]]),
             "saliency": torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0, 0]]),
             "pos_frame": pos, "windows": [torch.tensor([[2.0, 4.0]]), torch.tensor([[0.0, 1.0]]),
                                            torch.tensor([[1.0, 3.0]])]}
    terms = Criterion(loss_config_for("qvhighlights"))(outputs, batch)
    vcls = params["vcls"].detach().double().numpy()  # (B, K, T, C)
    qstep = params["qstep"].detach().double().numpy()  # (B, K, C)
    v = np.stack([vcls[b, :, pos[b]] for b in range(3)])  # (B, K, C) at each sample's positive frame
    video_level = np.mean([np_info_nce(v[:, k], qstep[:, k]) for k in range(3)])  # B x B per layer
    layer_wise = np.mean([np_info_nce(v[b], qstep[b]) for b in range(3)])  # K x K per sample
    assert terms["loss_video_nce"].item() == pytest.approx(video_level, rel=1e-5)
    assert terms["loss_layer_nce"].item() == pytest.approx(layer_wise, rel=1e-5)
    # a matched pair that is also the most similar one in both directions drives the term towards 0
    same = torch.eye(4)[:3].repeat(2, 1, 1)  # (2, 3, 4): three orthogonal unit rows
    assert float(info_nce_loss(same, same, TAU)) < 1e-5


def test_weights_applied_once_in_loss():
    outputs, _ = make_outputs([4, 4], 4, strides=(1, 2))
    batch = {"video_mask": torch.ones(2, 4, dtype=torch.bool),
             "saliency": torch.tensor([[0.0, 1.0, 1.0, 0.0], [0.5, 0.25, 0.0, 0.0]]),
             "pos_frame": torch.tensor([2, 0]), "windows": [torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 2.0]])]}
    cfg = LossConfig(cls_weight=2.0, reg_weight=3.0, sal_weight=5.0, video_nce_weight=7.0, layer_nce_weight=11.0)
    terms = Criterion(cfg)(outputs, batch)
    expected = (2 * terms["loss_cls"] + 3 * terms["loss_reg"] + 5 * terms["loss_sal"]
                + 7 * terms["loss_video_nce"] + 11 * terms["loss_layer_nce"])
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    unit = Criterion(LossConfig(1.0, 1.0, 1.0, 1.0, 1.0))(outputs, batch)
    for name in ("loss_cls", "loss_reg", "loss_sal", "loss_video_nce", "loss_layer_nce"):
        assert unit[name].item() == pytest.approx(terms[name].item(), rel=1e-6)  # terms come back unweighted
        assert unit[name].dtype == torch.float32


def test_loss_config_per_dataset():
    assert loss_config_for("qvhighlights").sal_weight == 0.1
    assert loss_config_for("ego4d").sal_weight == 0.1
    assert loss_config_for("tacos").sal_weight == 0.05
    assert loss_config_for("charades").sal_weight == 0.01
    for name in ("tvsum", "youtube"):
        cfg = loss_config_for(name)
        assert cfg.soft_cls and cfg.sal_weight == 0.1
    cfg = loss_config_for("qvhighlights")
    assert (cfg.cls_weight, cfg.reg_weight, cfg.video_nce_weight, cfg.layer_nce_weight, cfg.temperature) == \
        (1.0, 0.2, 0.1, 0.1, 0.07)
    with pytest.raises(ValueError, match="available datasets"):
        loss_config_for("kinetics")


def test_soft_cls_bce_to_saliency_and_row_only():
    outputs, params = make_outputs([3, 2], 3, strides=(1,), boundary=False)
    outputs["saliency"] = NCE_COS
    batch = {"video_mask": NCE_MASK, "saliency": NCE_SAL, "pos_frame": NCE_POS}
    terms = Criterion(loss_config_for("tvsum"))(outputs, batch)
    assert "loss_reg" not in terms
    x = params["cls"].detach().double().numpy()
    t = NCE_SAL.double().numpy()
    bce = -(t * np.log(np_sigmoid(x)) + (1 - t) * np.log(1 - np_sigmoid(x)))
    assert terms["loss_cls"].item() == pytest.approx(bce[NCE_MASK.numpy()].sum() / 5, rel=1e-5)
    row, _ = nce_by_hand()
    assert terms["loss_sal"].item() == pytest.approx(row, rel=1e-5)


def reference_style_nce(cosine, video_mask, saliency, pos):
    """The reference formulation (-inf fill, full log-softmax over every column) -- NaN gradients on empty columns."""
    rows = torch.arange(cosine.shape[0])
    candidate = video_mask & (saliency <= saliency[rows, pos][:, None])
    logits = cosine / TAU + torch.where(candidate, 0.0, float("-inf"))
    return (-F.log_softmax(logits, dim=1)[rows, pos].mean() - F.log_softmax(logits.t(), dim=1)[pos, rows].mean())


def test_empty_saliency_column_trains_with_finite_gradients():
    # frame 2: sample 0 scores 0.9 > its positive's 0.6, sample 1 has only 2 frames -> no candidate in that column
    n_frames = [3, 2]
    batch = {"video_mask": NCE_MASK, "saliency": NCE_SAL, "pos_frame": NCE_POS,
             "windows": [torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]])]}
    outputs, params = make_outputs(n_frames, 3, strides=(1, 2))

    naive = reference_style_nce(outputs["saliency"], batch["video_mask"], batch["saliency"], batch["pos_frame"])
    naive.backward()
    assert torch.isfinite(naive) and torch.isnan(params["h"].grad).any()  # the batch does trigger the defect
    for p in params.values():
        p.grad = None

    outputs, params = make_outputs(n_frames, 3, strides=(1, 2))
    terms = Criterion(loss_config_for("qvhighlights"))(outputs, batch)
    assert all(torch.isfinite(v) for v in terms.values())
    terms["loss"].backward()
    optimiser = torch.optim.SGD(params.values(), lr=0.1)
    assert all(torch.isfinite(p.grad).all() for p in params.values())
    optimiser.step()
    assert all(torch.isfinite(p).all() for p in params.values())


def test_positive_on_padding_is_loud():
    outputs, _ = make_outputs([3, 2], 3, strides=(1,))
    batch = {"video_mask": NCE_MASK, "saliency": NCE_SAL, "pos_frame": torch.tensor([1, 2]),
             "windows": [torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 2.0]])]}
    with pytest.raises(ValueError, match="pos_frame"):
        Criterion(loss_config_for("qvhighlights"))(outputs, batch)
