"""The unlabelled stream: seeded epochs one after another, sharded over ranks, and any window of
it reproducible from its position alone (what exact resume needs)."""

from __future__ import annotations

from transkd.engine.distributed import EpochSampler, StreamSampler


def stream(length, start, count, rank=0, world_size=1, seed=3):
    sampler = StreamSampler(length, seed, rank, world_size)
    sampler.set_window(start, count)
    items = list(sampler)
    assert len(items) == count == len(sampler)
    return items


def test_the_stream_runs_through_seeded_epochs_without_end():
    items = stream(5, 0, 12)
    epochs = EpochSampler(5, 3)
    expected = []
    for epoch in range(3):
        epochs.set_epoch(epoch)
        expected += [(epoch, i) for i in epochs.indices()]
    assert items == expected[:12]
    assert sorted(i for e, i in items if e == 0) == list(range(5))


def test_any_window_is_the_same_slice_of_the_stream():
    whole = stream(7, 0, 40)
    for start, count in ((0, 3), (5, 9), (13, 1), (20, 20)):
        assert stream(7, start, count) == whole[start:start + count]


def test_ranks_share_each_epoch_without_overlap():
    per_rank = [stream(9, 0, 5, rank, 2) for rank in range(2)]  # ceil(9 / 2) = 5 per rank
    first_epoch = [i for items in per_rank for e, i in items if e == 0]
    assert len(first_epoch) == 10 and set(first_epoch) == set(range(9))  # one repeated to even out
