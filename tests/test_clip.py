"""r2.clip: loading, tokenization and the layer taps of SPEC §2, checked against CLIP's own forward passes."""
import hashlib
import io
from urllib.error import URLError

import numpy as np
import pytest
import torch

import r2.clip as rc
import r2.fetch
from r2.clip import ClipLoadError, encode_frames, encode_texts, load_clip, parse_layers, tokenize

SOT, EOT = 49406, 49407
TEXTS = ["a man walks his dog", "", "wow!😀", "Café au lait — 日本語のテキスト"]


@pytest.fixture(scope="module")
def tiny():
    return load_clip("tiny")


@pytest.fixture(scope="module")
def frames():
    return np.random.default_rng(0).integers(0, 256, (5, 224, 224, 3), dtype=np.uint8)  # (T, H, W, 3)


def normalized(frames: np.ndarray) -> torch.Tensor:
    """OpenAI's preprocessing of already-cropped frames: ToTensor then Normalize; (T, 3, H, W)."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # (T, H, W, 3) -> (T, 3, H, W)
    return (x - torch.tensor(rc.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(rc.CLIP_STD).view(1, 3, 1, 1)


def block_outputs(blocks, run) -> tuple[list[torch.Tensor], object]:
    """Run `run()` while recording every block's output (N, B, D) -> list of (B, N, D)."""
    outputs = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: outputs.append(out.permute(1, 0, 2))) for block in blocks]
    try:
        result = run()
    finally:
        for hook in hooks:
            hook.remove()
    return outputs, result


# ------------------------------------------------------------------------------------------ taps vs CLIP itself

def test_last_visual_tap_reproduces_encode_image(tiny, frames):
    taps = encode_frames(tiny, frames, [9, 10, 11, 12])  # (T, K, P+1, Dv)
    visual = tiny.model.visual
    with torch.no_grad():
        expected = tiny.model.encode_image(normalized(frames))  # (T, E)
        got = visual.ln_post(taps[:, -1, 0]) @ visual.proj  # [CLS] of block 12 -> (T, E)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_last_text_tap_reproduces_encode_text(tiny):
    taps = encode_texts(tiny, TEXTS, [9, 10, 11, 12])  # per text (L, K, Dq)
    with torch.no_grad():
        expected = tiny.model.encode_text(tokenize(TEXTS))  # (N, E), pooled at the EOT
        got = torch.stack([tiny.model.ln_final(q[-1, -1]) @ tiny.model.text_projection for q in taps])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", [[1], [3, 7], [9, 10, 11, 12], [12]])
def test_visual_taps_equal_blocks_run_by_clip(tiny, frames, layers):
    visual = tiny.model.visual
    with torch.no_grad():
        reference, _ = block_outputs(visual.transformer.resblocks, lambda: visual(normalized(frames)))
    ran, taps = block_outputs(visual.transformer.resblocks, lambda: encode_frames(tiny, frames, layers, batch_size=2))
    assert taps.shape == (5, len(layers), 17, 192) and taps.dtype == torch.float32
    for k, layer in enumerate(layers):
        torch.testing.assert_close(taps[:, k], reference[layer - 1], rtol=1e-5, atol=1e-5)
    assert len(ran) == 3 * max(layers)  # 3 batches of <= 2 frames, blocks after the deepest tap never run


@pytest.mark.parametrize("layers", [[2], [9, 10, 11, 12], [1, 6, 12]])
def test_text_taps_equal_blocks_run_by_clip(tiny, layers):
    with torch.no_grad():
        reference, _ = block_outputs(tiny.model.transformer.resblocks,
                                     lambda: tiny.model.encode_text(tokenize(TEXTS)))
    taps = encode_texts(tiny, TEXTS, layers, batch_size=3)
    assert [len(q) for q in taps[1:3]] == [2, 5]  # "" -> SOT EOT; "wow!😀" -> SOT wow ! (BPE id 0) 😀 EOT
    for i, q in enumerate(taps):
        eot = int((tokenize(TEXTS[i])[0] == EOT).nonzero())
        assert q.shape == (eot + 1, len(layers), 128) and q.dtype == torch.float32
        for k, layer in enumerate(layers):
            torch.testing.assert_close(q[:, k], reference[layer - 1][i, :eot + 1], rtol=1e-5, atol=1e-5)


def test_taps_independent_of_batching_input_type_and_inference_mode(tiny, frames):
    reference = encode_frames(tiny, frames, [10, 12])
    with torch.inference_mode():
        from_tensor = encode_frames(tiny, torch.from_numpy(frames), [10, 12], batch_size=1)
    torch.testing.assert_close(from_tensor, reference, rtol=1e-5, atol=1e-5)
    one_by_one = encode_texts(tiny, TEXTS, [12], batch_size=1)
    for a, b in zip(one_by_one, encode_texts(tiny, TEXTS, [12])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_returns_float32_close_to_fp32(tiny, frames):
    fp32 = encode_frames(tiny, frames[:2], [9, 12])
    bf16 = encode_frames(tiny, frames[:2], [9, 12], bf16=True)
    assert bf16.dtype == torch.float32
    assert ((bf16 - fp32).norm() / fp32.norm()).item() < 2e-2
    assert not torch.equal(bf16, fp32)  # the flag really changes the arithmetic
    q32, q16 = encode_texts(tiny, TEXTS[:1], [12])[0], encode_texts(tiny, TEXTS[:1], [12], bf16=True)[0]
    assert q16.dtype == torch.float32 and ((q16 - q32).norm() / q32.norm()).item() < 2e-2


def test_frozen_fp32_and_dims(tiny):
    assert (tiny.vision_width, tiny.text_width, tiny.tokens, tiny.image_size) == (192, 128, 17, 224)
    assert (tiny.vision_layers, tiny.text_layers, tiny.name) == (12, 12, "tiny")
    params = list(tiny.model.parameters())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in params)
    assert not tiny.model.training


def test_bad_layers_and_frames_are_value_errors(tiny, frames):
    with pytest.raises(ValueError, match=r"1\.\.12"):
        encode_frames(tiny, frames, [12, 13])
    with pytest.raises(ValueError, match="ascending"):
        encode_texts(tiny, ["x"], [12, 9])
    with pytest.raises(ValueError, match=r"\(T, 224, 224, 3\)"):
        encode_frames(tiny, frames[:, :200], [12])
    with pytest.raises(ValueError, match="uint8"):
        encode_frames(tiny, frames.astype(np.float32), [12])


# ------------------------------------------------------------------------------------------ parse_layers, tokenize

@pytest.mark.parametrize("text, expected", [("9-12", [9, 10, 11, 12]), ("12", [12]), ("4,8,12", [4, 8, 12]),
                                            (" 2, 9-12 ", [2, 9, 10, 11, 12]), ("1-1", [1])])
def test_parse_layers(text, expected):
    assert parse_layers(text, 12) == expected


@pytest.mark.parametrize("text", ["", "a", "12-9", "0-3", "13", "9,9", "10,9", "9-", "-3", "9..12"])
def test_parse_layers_rejects(text):
    with pytest.raises(ValueError, match=r"1\.\.12"):
        parse_layers(text, 12)


def test_tokenize_layout():
    ids = tokenize(["a dog", ""])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [SOT, 320, 1929, EOT] and not ids[0, 4:].any()
    assert ids[1, :2].tolist() == [SOT, EOT] and not ids[1, 2:].any()
    assert torch.equal(tokenize("a dog"), ids[:1])


def test_tokenize_truncates_keeping_eot_last(tiny):
    words = " ".join(f"word{i}" for i in range(200))
    full = [SOT, *rc._tokenizer().encode(words), EOT]
    ids = tokenize(words)[0]
    assert len(full) > 77
    assert ids.tolist() == full[:76] + [EOT]
    assert encode_texts(tiny, [words], [12])[0].shape == (77, 1, 128)


def test_tokenize_non_ascii_and_emoji():
    ids = tokenize(["Café au lait — 日本語のテキスト", "🐕🎉 party!", "wow!😀"])
    for row in ids:
        eot = int((row == EOT).nonzero())
        assert row[0] == SOT and eot >= 3 and not row[eot + 1:].any()
    assert ids[2, :5].tolist() == [SOT, 2781, 0, 7334, EOT]  # BPE id 0 ("!") inside a query


# ------------------------------------------------------------------------------------------ loading, checksums

def test_tiny_is_deterministic_and_leaves_global_rng_alone(tiny, frames):
    state = torch.random.get_rng_state()
    again = load_clip("tiny")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert again.sha256 == tiny.sha256 == rc.weights_sha256(tiny.model)
    torch.testing.assert_close(encode_frames(again, frames[:2], [12]), encode_frames(tiny, frames[:2], [12]),
                               rtol=0, atol=0)
    other = rc.tiny_clip_state_dict(seed=1)
    assert any(not torch.equal(other[k], v) for k, v in rc.tiny_clip_state_dict(seed=0).items())


@pytest.mark.slow  # writes and hashes two full-size checkpoints (~4 s)
def test_checksum_same_from_torchscript_and_state_dict_files(tiny, tmp_path):
    state_dict = rc.tiny_clip_state_dict()
    archive = rc.write_clip_checkpoint(state_dict, tmp_path / "tiny_jit.pt", torchscript=True)
    plain = rc.write_clip_checkpoint(state_dict, tmp_path / "tiny_sd.pt", torchscript=False)
    torch.save({"state_dict": state_dict}, tmp_path / "wrapped.pt")
    assert rc._is_torchscript(archive) and not rc._is_torchscript(plain)
    for path in (archive, plain, tmp_path / "wrapped.pt"):
        loaded = load_clip(str(path))
        assert loaded.sha256 == tiny.sha256, path
        assert loaded.name == str(path)
    assert rc.weights_sha256(rc._build_model(rc.tiny_clip_state_dict(seed=1)).float()) != tiny.sha256


@pytest.mark.slow
def test_full_size_vit_b32_torchscript_checkpoint(vit_b32_file):
    clip = load_clip(str(vit_b32_file))
    assert (clip.vision_width, clip.text_width, clip.tokens, clip.image_size) == (768, 512, 50, 224)
    assert (clip.vision_layers, clip.text_layers) == (12, 12)
    assert all(p.dtype == torch.float32 for p in clip.model.parameters())
    frames = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    taps = encode_frames(clip, frames, [9, 10, 11, 12])
    assert taps.shape == (2, 4, 50, 768) and torch.isfinite(taps).all()
    with torch.no_grad():
        expected = clip.model.encode_image(normalized(frames))
        got = clip.model.visual.ln_post(taps[:, -1, 0]) @ clip.model.visual.proj
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    (query,) = encode_texts(clip, ["a person opens the fridge"], [9, 10, 11, 12])
    assert query.shape == (7, 4, 512) and torch.isfinite(query).all()


# ------------------------------------------------------------------------------------------ errors and downloads

def test_missing_path_is_a_clip_load_error(tmp_path):
    with pytest.raises(ClipLoadError, match=r"nope\.pt not found.*--clip PATH.*--clip tiny"):
        load_clip(str(tmp_path / "nope.pt"))


def test_text_file_is_a_clip_load_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a checkpoint\n")
    with pytest.raises(ClipLoadError, match=r"notes\.txt.*--clip PATH.*--clip tiny") as err:
        load_clip(str(path))
    assert "\n" not in str(err.value)


def test_state_dict_of_something_else_is_a_clip_load_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    with pytest.raises(ClipLoadError, match=r"other\.pt is not an OpenAI ViT CLIP.*visual\.proj"):
        load_clip(str(path))


def _refuse(*_args, **_kwargs):
    raise URLError("offline")


def test_named_model_offline_is_a_clip_load_error(tmp_path, monkeypatch):
    monkeypatch.setenv("R2_CLIP_CACHE", str(tmp_path))
    monkeypatch.setattr(r2.fetch, "urlopen", _refuse)
    with pytest.raises(ClipLoadError, match="ViT-B-32.pt") as err:
        load_clip("ViT-B/32")
    message = str(err.value)
    assert rc.OPENAI_MODELS["ViT-B/32"] in message and "--clip tiny" in message and "--clip PATH" in message
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_cached_file_with_wrong_checksum_is_a_clip_load_error(tmp_path, monkeypatch):
    monkeypatch.setenv("R2_CLIP_CACHE", str(tmp_path))
    monkeypatch.setattr(r2.fetch, "urlopen", _refuse)
    (tmp_path / "ViT-B-32.pt").write_bytes(b"truncated download")
    with pytest.raises(ClipLoadError, match="ViT-B-32.pt has SHA-256 .* expected 40d36571"):
        load_clip("ViT-B/32")


def test_download_is_verified_then_cached(tmp_path, monkeypatch):
    buffer = io.BytesIO()
    torch.save(rc.tiny_clip_state_dict(), buffer)
    payload = buffer.getvalue()
    good = hashlib.sha256(payload).hexdigest()
    monkeypatch.setenv("R2_CLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(rc.OPENAI_MODELS, "ViT-test", f"https://example.invalid/{good}/ViT-test.pt")
    monkeypatch.setitem(rc.OPENAI_MODELS, "ViT-bad", f"https://example.invalid/{'0' * 64}/ViT-bad.pt")
    monkeypatch.setattr(r2.fetch, "urlopen", lambda url, timeout: io.BytesIO(payload))
    with pytest.raises(ClipLoadError, match="expected 0000"):
        load_clip("ViT-bad")
    assert list((tmp_path / "cache").iterdir()) == []
    first = load_clip("ViT-test")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["ViT-test.pt"]
    monkeypatch.setattr(r2.fetch, "urlopen", _refuse)  # the second load must come from the cache
    assert load_clip("ViT-test").sha256 == first.sha256 == load_clip("tiny").sha256


@pytest.mark.parametrize("batch_size", [0, -1, 2.5])
def test_a_batch_size_below_one_is_refused_not_an_unwritten_buffer(batch_size):
    model = load_clip("tiny")
    frames = np.zeros((3, model.image_size, model.image_size, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size .* must be an integer >= 1"):
        encode_frames(model, frames, [12], batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size .* must be an integer >= 1"):
        encode_texts(model, ["a red screen"], [12], batch_size=batch_size)
