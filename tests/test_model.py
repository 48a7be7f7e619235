"""R2Model (SPEC §3): parameter counts, output contract, padding invariance, init semantics, any length, AMP."""
import math

import pytest
import torch
import torch.nn as nn

from r2.model import R2Config, R2Model, config_for
from r2.model.block import sinusoidal_positions, temporal_endpoint_feature

TINY = dict(video_dim=64, query_dim=64, tokens=5, layers=4)


def tiny_model(opened=True, **overrides) -> R2Model:
    """Tiny eval-mode model; `opened` moves scale/gate off their init so the pooled branch and gates matter."""
    torch.manual_seed(0)
    model = R2Model(R2Config(**{**TINY, "hidden": 32, "heads": 4, **overrides})).eval()
    if opened:
        with torch.no_grad():
            model.block.scale.uniform_(0.5, 1.5)
            model.block.gate.normal_()
    return model


def make_batch(n_frames, n_tokens, t=None, l=None, cfg=R2Config(**TINY), garbage=False, seed=0):
    """Padded batch from per-sample lengths; each sample's real content depends only on its seed and index."""
    t = t or max(n_frames)
    l = l or max(n_tokens)
    b = len(n_frames)
    fill = torch.randn if garbage else torch.zeros
    video = fill(b, cfg.layers, t, cfg.tokens, cfg.video_dim)
    query = fill(b, cfg.layers, l, cfg.query_dim)
    for i, (tb, lb) in enumerate(zip(n_frames, n_tokens)):
        g = torch.Generator().manual_seed(seed * 100 + i)
        video[i, :, :tb] = torch.randn(cfg.layers, tb, cfg.tokens, cfg.video_dim, generator=g)
        query[i, :, :lb] = torch.randn(cfg.layers, lb, cfg.query_dim, generator=g)
    video_mask = torch.arange(t)[None] < torch.tensor(n_frames)[:, None]  # (B, T)
    query_mask = torch.arange(l)[None] < torch.tensor(n_tokens)[:, None]  # (B, L)
    return video, video_mask, query, query_mask


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_parameter_counts_match_the_reference():
    assert n_params(R2Model(config_for("qvhighlights", 768, 512, 50, 4))) == 2_836_242
    assert n_params(R2Model(config_for("tvsum", 768, 512, 50, 4))) == 1_846_281
    assert n_params(R2Model(config_for("youtube", 768, 512, 50, 4))) == 1_846_281


def test_config_variants():
    assert config_for("charades", 64, 64, 5, 4).dropout == 0.35
    assert config_for("ego4d", 64, 64, 5, 4).dropout == 0.3
    assert config_for("TACoS", 64, 64, 5, 4).dropout == 0.5
    tv = config_for("tvsum", 64, 64, 5, 4)
    assert (tv.tef, tv.strides, tv.boundary) == (False, (1,), False)
    with pytest.raises(ValueError, match="not supported"):
        config_for("kinetics", 64, 64, 5, 4)
    with pytest.raises(ValueError, match="strides"):
        R2Config(**TINY, strides=(1, 3))
    with pytest.raises(ValueError, match="hidden"):
        R2Config(**TINY, hidden=30, heads=4)


@pytest.mark.parametrize("n_frames,t,levels", [
    ((13, 7, 2), 13, (13, 6, 3, 1)),  # T not a multiple of 8
    ((5, 3, 5), 5, (5, 2, 1)),  # T < 8: the stride-8 level is absent
    ((1, 1, 1), 1, (1,)),  # T = 1: only stride 1
])
def test_output_shapes_and_points(n_frames, t, levels):
    model = tiny_model()
    out = model(*make_batch(n_frames, (3, 6, 1)))
    n, strides = sum(levels), (1, 2, 4, 8)[:len(levels)]
    assert set(out) == {"saliency", "class_logits", "boundaries", "point_mask", "points", "point_strides",
                        "video_cls", "query_step"}
    assert out["saliency"].shape == (3, t)
    assert out["class_logits"].shape == (3, n)
    assert out["boundaries"].shape == (3, n, 2)
    assert out["point_mask"].shape == (3, n) and out["point_mask"].dtype == torch.bool
    assert out["video_cls"].shape == (3, 4, t, 32)
    assert out["query_step"].shape == (3, 4, 32)
    expected_points = torch.cat([torch.arange(m) * s for m, s in zip(levels, strides)]).float()
    expected_strides = torch.cat([torch.full((m,), s) for m, s in zip(levels, strides)]).float()
    assert torch.equal(out["points"], expected_points)
    assert torch.equal(out["point_strides"], expected_strides)
    # (p + 1) * s <= T_b: a sample has exactly floor(T_b / s) valid positions per present level
    for i, tb in enumerate(n_frames):
        assert int(out["point_mask"][i].sum()) == sum(tb // s for s in strides)
    assert (out["boundaries"] > 0).all()
    assert torch.all(out["saliency"].abs() <= 1 + 1e-6)
    assert torch.all(out["saliency"][~make_batch(n_frames, (3, 6, 1))[1]] == 0)


def test_highlight_only_config_has_no_boundaries():
    model = tiny_model(tef=False, strides=(1,), boundary=False)
    out = model(*make_batch((6, 4), (2, 3)))
    assert "boundaries" not in out
    assert out["class_logits"].shape == (2, 6) and torch.equal(out["points"], torch.arange(6).float())


@pytest.mark.parametrize("garbage", [False, True])
def test_padding_invariance(garbage):
    model = tiny_model()
    n_frames, n_tokens = (9, 4, 13, 1), (3, 6, 2, 5)
    batch = make_batch(n_frames, n_tokens, t=17, l=8, garbage=garbage)
    out = model(*batch)
    for i, (tb, lb) in enumerate(zip(n_frames, n_tokens)):
        alone = model(*_single(batch, i, tb, lb))
        assert torch.allclose(out["saliency"][i, :tb], alone["saliency"][0], atol=1e-5)
        valid = out["point_mask"][i]
        assert torch.equal(out["points"][valid], alone["points"])
        assert torch.equal(out["point_strides"][valid], alone["point_strides"])
        assert alone["point_mask"].all()
        assert torch.allclose(out["class_logits"][i][valid], alone["class_logits"][0], atol=1e-5)
        assert torch.allclose(out["boundaries"][i][valid], alone["boundaries"][0], atol=1e-5)
        assert torch.allclose(out["video_cls"][i, :, :tb], alone["video_cls"][0], atol=1e-5)
        assert torch.allclose(out["query_step"][i], alone["query_step"][0], atol=1e-5)


def _single(batch, i, tb, lb):
    video, _, query, _ = batch
    return (video[i:i + 1, :, :tb], torch.ones(1, tb, dtype=torch.bool), query[i:i + 1, :, :lb],
            torch.ones(1, lb, dtype=torch.bool))


def test_positional_encoding_and_tef_by_hand():
    pe = sinusoidal_positions(torch.tensor([4]), 4, 4)  # position 1 of 4 -> angle pi/2; freqs 1, 1, 100, 100
    a = math.pi / 2
    assert torch.allclose(pe[0, 0], torch.tensor([math.sin(a), math.cos(a), math.sin(a / 100), math.cos(a / 100)]), atol=1e-6)
    assert torch.allclose(pe[0, 3, :2], torch.tensor([math.sin(2 * math.pi), 1.0]), atol=1e-6)
    tef = temporal_endpoint_feature(torch.tensor([4, 2]), 4)
    assert torch.allclose(tef[0], torch.tensor([[0, .25], [.25, .5], [.5, .75], [.75, 1.]]))
    assert torch.allclose(tef[1, :2], torch.tensor([[0, .5], [.5, 1.]]))


class _PassThrough(nn.Module):
    """Stands in for the temporal layer so the block's pooling and gating can be checked by hand."""

    def forward(self, x, video_mask, query, query_mask, pe):
        return x


def test_scale_and_gate_by_hand():
    torch.manual_seed(0)
    cfg = R2Config(video_dim=8, query_dim=6, tokens=3, layers=2, hidden=4, heads=1)
    block = R2Model(cfg).eval().block
    block.temporal = _PassThrough()
    video, video_mask, query, query_mask = make_batch((2,), (3,), l=4, cfg=cfg)
    query_mask[0, 2] = False  # tokens 0, 1 real (prefix), 2 and 3 padding
    query_mask[0, 3] = False

    def mapped(k):
        tef = torch.tensor([[0.0, 0.5], [0.5, 1.0]])[:, None].expand(2, 3, 2)  # (T, P+1, 2), T_b = 2
        v = block.video_map(torch.cat((video[0, k], tef), dim=-1))  # (T, P+1, C)
        return v, block.query_map(query[0, k])  # (L, C)

    # At init: tanh(0) = 0 switches the pooled branch off and sigmoid(0) = 0.5 averages the two steps.
    (v0, _), (v1, _) = mapped(0), mapped(1)
    h = block(video, video_mask, query, query_mask)["hidden"][0]
    assert torch.allclose(h, 0.5 * v0[:, 0] + 0.5 * v1[:, 0], atol=1e-6)

    # Deep step (layer 1): tanh(scale) = 0.5; shallow step (layer 0) gate sigmoid = 0.25 on its own features.
    with torch.no_grad():
        block.scale[1] = math.atanh(0.5)
        block.gate[0] = math.log(0.25 / 0.75)
    v1, q1 = mapped(1)
    pooled = torch.empty(2, 4)
    for t in range(2):
        per_token = []
        for l in range(2):  # only the real query tokens
            scores = torch.stack([block.w_q(q1[l]) @ block.w_v(v1[t, p]) / 2.0 for p in range(3)])  # sqrt(C) = 2
            weights = scores.softmax(dim=0)
            per_token.append(sum(weights[p] * v1[t, p] for p in range(3)) + q1[l])
        pooled[t] = torch.stack(per_token).amax(dim=0)
    f_deep = v1[:, 0] + 0.5 * pooled
    # Padded query tokens never win the max, whatever they hold.
    q_padded = torch.cat((q1[:2], torch.full((2, 4), 1e3)))[None]  # (1, L, C)
    assert torch.allclose(block.spatial_pool(v1[None], q_padded, query_mask)[0], pooled, atol=1e-5)
    h = block(video, video_mask, query, query_mask)["hidden"][0]
    assert torch.allclose(h, 0.25 * v0[:, 0] + 0.75 * f_deep, atol=1e-5)


def test_any_length_and_bf16_autocast():
    model = tiny_model()
    with torch.no_grad():
        out = model(*make_batch((1000, 700), (4, 2)))
    assert out["saliency"].shape == (2, 1000)
    assert out["class_logits"].shape == (2, 1000 + 500 + 250 + 125)
    assert all(torch.isfinite(v).all() for v in out.values() if v.is_floating_point())

    video, video_mask, query, query_mask = make_batch((12, 7), (4, 2))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        amp = model(video.half(), video_mask, query.half(), query_mask)
    for key in ("saliency", "class_logits", "boundaries", "video_cls", "query_step"):
        assert amp[key].dtype == torch.float32 and torch.isfinite(amp[key]).all(), key
    ref = model(video, video_mask, query, query_mask)
    assert torch.allclose(amp["saliency"], ref["saliency"], atol=0.1)


@pytest.mark.parametrize("overrides,unused", [({}, set()), (dict(tef=False, strides=(1,), boundary=False),
                                                              {"boundary_coef"})])
def test_backward_gives_finite_grads(overrides, unused):
    model = tiny_model(**overrides).train()
    out = model(*make_batch((9, 4, 13), (3, 6, 2)))
    loss = out["saliency"].sum() + out["class_logits"].sum() + out["video_cls"].sum() + out["query_step"].sum()
    if "boundaries" in out:
        loss = loss + out["boundaries"].sum()
    loss.backward()
    for name, p in model.named_parameters():
        if name in unused:  # kept only for the reference parameter count: no boundary head uses it
            assert p.grad is None
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_bad_inputs_fail_loudly():
    model = tiny_model()
    video, video_mask, query, query_mask = make_batch((5, 3), (2, 2))
    with pytest.raises(ValueError, match="video has shape"):
        model(video[..., :10], video_mask, query, query_mask)
    holes = video_mask.clone()
    holes[0, 1] = False
    with pytest.raises(ValueError, match="video_mask"):
        model(video, holes, query, query_mask)
    with pytest.raises(ValueError, match="query_mask"):
        model(video, video_mask, query, query_mask.float())


# ----------------------------------------------------------------- the fast path is the plain path, rewritten


def _run(model, batch, criterion, seed):
    """Outputs, loss terms and every parameter's gradient of one forward/backward, random draws from `seed`."""
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    out = model(*batch[:4])
    terms = criterion(out, batch[4])
    terms["loss"].backward()
    return out, {k: v.detach() for k, v in terms.items()}, {n: p.grad for n, p in model.named_parameters()}


def _loss_batch(video, video_mask, query, query_mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t = video_mask.shape
    n_frames = video_mask.sum(1)
    saliency = torch.rand(b, t, generator=g) * video_mask
    pos = torch.stack([torch.randint(0, int(n), (1,), generator=g)[0] for n in n_frames])
    windows = [torch.tensor([[max(0.0, float(p) - 2), min(float(n), float(p) + 3)]]) for p, n in zip(pos, n_frames)]
    return {"video_mask": video_mask, "saliency": saliency, "pos_frame": pos, "windows": windows}


@pytest.mark.parametrize("dataset", ["qvhighlights", "tvsum"])
@pytest.mark.parametrize("train", [False, True])
def test_fast_path_matches_plain_path(dataset, train):
    """Outputs, every loss term and every gradient of the fused/rewritten path equal the op-by-op path's (float32
    rounding), at the reference's small dims; padded batch with garbage in the padding; train mode with dropout
    0.5 / droppath 0.1 and the same seed (both paths draw the same masks in the same order)."""
    from r2.losses import Criterion, loss_config_for

    torch.manual_seed(0)
    cfg = config_for(dataset, 64, 48, 50, 4)
    cfg = R2Config(**{**cfg.__dict__, "hidden": 96, "dropout": 0.5 if train else 0.0,
                      "droppath": 0.1 if train else 0.0})
    model = R2Model(cfg).train(train)
    with torch.no_grad():
        model.block.scale.uniform_(-1.5, 1.5)
        model.block.gate.uniform_(-1.5, 1.5)
        for name, p in model.named_parameters():
            if p.dim() == 1 and "coef" not in name:
                p.add_(0.1 * torch.randn_like(p))
    video, video_mask, query, query_mask = make_batch((20, 13, 20), (7, 4, 5), cfg=cfg, garbage=True)
    batch = (video.half(), video_mask, query.half(), query_mask, _loss_batch(video, video_mask, query, query_mask))
    criterion = Criterion(loss_config_for(dataset))
    model.block.fast = False
    plain = _run(model, batch, criterion, seed=7)
    model.block.fast = True
    fast = _run(model, batch, criterion, seed=7)
    for key, ref in plain[0].items():
        torch.testing.assert_close(fast[0][key], ref, atol=1e-5, rtol=1e-5, msg=key)
    for key, ref in plain[1].items():
        torch.testing.assert_close(fast[1][key], ref, atol=1e-7, rtol=1e-5, msg=key)
    for name, ref in plain[2].items():
        got = fast[2][name]
        if ref is None:  # TVSum's unused boundary coefficient
            assert got is None, name
            continue
        scale = max(ref.abs().max().item(), got.abs().max().item())
        assert (got - ref).abs().max().item() <= max(1e-4 * scale, 1e-7), name


def test_fast_path_under_bf16_autocast_is_as_close_to_fp32_as_the_plain_path():
    model = tiny_model().train()
    batch = make_batch((12, 7), (4, 2))
    runs = {}
    for name, fast, amp in (("fp32", False, False), ("plain", False, True), ("fast", True, True)):
        model.block.fast = fast
        torch.manual_seed(3)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(*batch)
        (out["saliency"].sum() + out["class_logits"].sum()).backward()
        runs[name] = (out, model.block.video_map[2].weight.grad.clone(), model.block.video_map[0].weight.grad.clone())
        model.zero_grad()
    ref = runs["fp32"]
    for key in ("saliency", "class_logits"):
        err = {name: (runs[name][0][key] - ref[0][key]).abs().max().item() for name in ("plain", "fast")}
        assert runs["fast"][0][key].dtype == torch.float32
        assert err["fast"] <= 2 * err["plain"] + 1e-3, (key, err)
    for i in (1, 2):  # the fused Linear's weight and LayerNorm weight gradients
        err = {name: (runs[name][i] - ref[i]).norm().item() for name in ("plain", "fast")}
        assert err["fast"] <= 2 * err["plain"] + 1e-3 * ref[i].norm().item(), err


@pytest.mark.parametrize("p", [0.5, 0.3])
def test_keep_mask_is_inverted_dropout(p):
    from r2.model.block import keep_mask

    torch.manual_seed(0)
    mask = keep_mask((64, 50, 77), p)
    keep = 1 - p
    values = mask.unique()
    assert values.tolist() == [0.0, pytest.approx(1 / keep)] and values[1] == torch.tensor(1 / keep)
    frac = (mask > 0).float().mean().item()
    assert abs(frac - keep) < 4 * math.sqrt(keep * p / mask.numel())
    for dim in range(3):  # no structure along any axis (the bit layout is spread over the flat index)
        per_slice = (mask > 0).float().mean(dim=[d for d in range(3) if d != dim])
        assert (per_slice - keep).abs().max() < 0.05
    torch.manual_seed(0)
    assert torch.equal(keep_mask((64, 50, 77), p), mask)


# ----------------------------------------------------------------- torch.compile


@pytest.mark.slow
def test_compiled_model_has_no_graph_break_and_matches_eager():
    """torch.compile(R2Model) traces the whole forward as one graph, in train mode with dropout and droppath (the
    input checks become in-graph asserts, the mask draws an out-of-place randint), and the compiled model's
    outputs and gradients equal eager's. The equality run has dropout and droppath at 0: compiled code draws its
    random numbers with its own generator."""
    model = tiny_model().train()
    batch = make_batch((12, 7), (4, 2), garbage=True)
    explanation = torch._dynamo.explain(model)(*batch)
    assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons

    model = tiny_model(dropout=0.0, droppath=0.0).train()
    runs = []
    for run in (model, torch.compile(model)):
        model.zero_grad(set_to_none=True)
        out = run(*batch)
        (out["saliency"].sum() + out["class_logits"].sum() + out["boundaries"].sum()).backward()
        runs.append((out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (eager, eager_grads), (compiled, compiled_grads) = runs
    for key, ref in eager.items():
        torch.testing.assert_close(compiled[key], ref, atol=1e-5, rtol=1e-4, msg=key)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, ref in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], ref, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow  # torch.compile (~4 s)
def test_compiled_dropout_takes_a_new_p_in_the_same_process():
    """Once torch.compile has seen two dropout rates it traces p as a symbolic float (a --dropout sweep in one
    process, or two models of one test session): the mask is still one graph and still inverted dropout."""
    from r2.model.block import Dropout

    torch._dynamo.reset()
    x = torch.ones(64, 50, 77)
    for p in (0.1, 0.3, 0.5, 0.25):
        torch.manual_seed(0)
        mask = torch.compile(Dropout(p).train(), backend="eager", fullgraph=True)(x)
        keep = 1 - p
        assert mask.unique().tolist() == [0.0, torch.tensor(1 / keep).item()], p
        assert abs((mask > 0).float().mean().item() - keep) < 4 * math.sqrt(keep * p / mask.numel()), p


@pytest.mark.slow  # torch.compile (~5 s)
def test_compiled_input_checks_still_fail_loudly():
    """Under torch.compile the mask checks run inside the graph: a mask with a hole still stops the forward."""
    model = tiny_model()
    video, video_mask, query, query_mask = make_batch((6, 4), (3, 2))
    holes = video_mask.clone()
    holes[0, 2] = False
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(RuntimeError, match="video_mask: every sample needs a non-empty prefix"):
        compiled(video, holes, query, query_mask)


def test_keep_values_into_a_workspace_equal_keep_mask_and_reuse_its_memory():
    """The fast path's masks (words saved, expanded into reused scratch memory) are keep_mask's, entry for entry."""
    from r2.model.block import Workspace, keep_mask, keep_values, keep_words

    ws = Workspace()
    for p, shape in ((0.5, (7, 50, 77)), (0.3, (7, 50, 77)), (0.5, (3, 5))):
        n = math.prod(shape)
        torch.manual_seed(1)
        words = keep_words(n, p)
        assert words.dtype == torch.int32 and words.numel() == (-(-n // 31) if p == 0.5 else n)
        size = 31 * words.numel() if p == 0.5 else n
        got = keep_values(words, n, p, out=ws.get("mask", size, torch.int32, torch.device("cpu")))
        torch.manual_seed(1)
        assert torch.equal(got.view(shape), keep_mask(shape, p))
    first = ws.get("rows", 100, torch.float32, torch.device("cpu"))
    assert ws.get("rows", 60, torch.float32, torch.device("cpu")).data_ptr() == first.data_ptr()  # reused
    assert ws.get("rows", 200, torch.float32, torch.device("cpu")).numel() == 200  # grown
    assert ws.get("rows", 10, torch.float64, torch.device("cpu")).dtype == torch.float64
    import copy

    assert copy.deepcopy(ws)._buffers == {}  # scratch, not state


def test_spatial_pool_backward_is_autograds():
    """SpatialPool's hand-written backward (one dy written in place) against numerical gradients, float64."""
    from r2.model.block import SpatialPool

    g = torch.Generator().manual_seed(0)
    y = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)  # (B, T, P+1, C)
    q2 = torch.randn(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)  # (B, L, C)
    const = torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)  # (B, L)
    assert torch.autograd.gradcheck(SpatialPool.apply, (y, q2, const))
    cls, pooled = SpatialPool.apply(y, q2, const)
    attn = ((torch.einsum("blc,btpc->btlp", q2, y) + const[:, None, :, None]) / 2).softmax(-1)  # sqrt(C) = 2
    torch.testing.assert_close(pooled, torch.einsum("btlp,btpc->btlc", attn, y))
    torch.testing.assert_close(cls, y[:, :, 0])
