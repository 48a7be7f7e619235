"""r2/data.py directly: collate's padding and masks, the global batch sampler across ranks, the positive frame."""
import pytest
import torch

from r2.data import GlobalBatchSampler, Sample, collate, positive_frame


def sample(index: int, t: int, length: int, k: int = 2, p: int = 3, dv: int = 4, dq: int = 5) -> Sample:
    video = torch.full((k, t, p, dv), float(index + 1), dtype=torch.float16)
    query = torch.full((k, length, dq), -float(index + 1), dtype=torch.float16)
    return Sample(index=index, video=video, query=query, windows=torch.tensor([[0.0, 1.0]] * (index + 1)),
                  saliency=torch.linspace(0, 1, t), pos_frame=t - 1, fps=0.5, duration=2.0 * t)


def test_collate_pads_with_zeros_and_masks_mark_the_real_frames_and_tokens():
    batch = collate([sample(0, 3, 4), sample(1, 5, 2)])
    assert batch["video"].shape == (2, 2, 5, 3, 4) and batch["query"].shape == (2, 2, 4, 5)
    assert batch["video_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["query_mask"].tolist() == [[True] * 4, [True, True, False, False]]
    assert (batch["video"][0, :, 3:] == 0).all() and (batch["video"][0, :, :3] == 1).all()  # padding is 0, not inf
    assert (batch["query"][1, :, 2:] == 0).all() and (batch["query"][1, :, :2] == -2).all()
    assert batch["video"].dtype == torch.float16  # kept in the stored precision until the model
    assert batch["n_frames"].tolist() == [3, 5] and batch["pos_frame"].tolist() == [2, 4]
    assert batch["saliency"][0, 3:].eq(0).all() and batch["saliency"][1, -1] == 1
    assert [len(w) for w in batch["windows"]] == [1, 2] and batch["index"].tolist() == [0, 1]
    assert batch["duration"].tolist() == [6.0, 10.0] and batch["fps"].tolist() == [0.5, 0.5]


@pytest.mark.parametrize("n, batch_size, world", [(10, 4, 1), (10, 4, 2), (9, 4, 2), (7, 3, 3), (5, 8, 2)])
def test_n_ranks_together_see_the_single_process_batches(n, batch_size, world):
    one = list(GlobalBatchSampler(n, batch_size, seed=3))
    ranks = [list(GlobalBatchSampler(n, batch_size, seed=3, rank=r, world=world)) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1  # every rank takes the same number of steps (no rank stalls)
    for step, parts in enumerate(zip(*ranks)):
        merged = sorted(i for part in parts for i in part)
        assert merged == sorted(one[step])  # rank parts of a global batch are that batch, split
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
    seen = [i for batch in one for i in batch]
    assert sorted(seen) == list(range(n))  # one epoch: every sample once
    assert list(GlobalBatchSampler(n, batch_size, seed=4)) != one or n < 3  # another seed, another order


def test_a_last_batch_smaller_than_the_ranks_is_dropped():
    # 9 samples, batch 4: batches of 4, 4, 1; with 2 ranks the single-sample batch cannot be split
    assert [len(b) for b in GlobalBatchSampler(9, 4, seed=0, rank=0, world=2)] == [2, 2]
    assert len(GlobalBatchSampler(9, 4, seed=0, rank=1, world=2)) == 2


def test_positive_frame_is_drawn_among_the_positives_and_depends_on_the_seed_only():
    saliency = torch.tensor([0.0, 0.5, 0.0, 1.0, 0.25, 0.0])
    draws = [positive_frame(saliency, "qvhighlights", seed) for seed in range(200)]
    assert set(draws) == {1, 3, 4}  # saliency > 0, each reached
    assert draws == [positive_frame(saliency, "qvhighlights", seed) for seed in range(200)]  # no global RNG
    torch.manual_seed(123)
    assert positive_frame(saliency, "qvhighlights", 7) == draws[7]
    assert {positive_frame(saliency, "tvsum", s) for s in range(100)} == {1, 3, 4}  # above the lower median 0
    youtube = torch.tensor([0.5, 1.0, 0.5, 0.75])
    assert {positive_frame(youtube, "youtube", s) for s in range(100)} == {1, 3}  # > 0.5
    assert positive_frame(torch.zeros(4), "qvhighlights", 0) == 0  # no positive: the most salient frame
    assert positive_frame(torch.tensor([0.0, 0.0, 0.3]), "youtube", 0) == 2
