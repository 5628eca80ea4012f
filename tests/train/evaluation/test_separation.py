"""train.evaluation.separation: chunked separation equals whole-signal separation, and
sources are aligned between chunks. (The command line end to end: test_separate_command.)"""
import pytest
import torch

from train.evaluation import separation as S


def local_model(swap_when_positive=False):
    """A separator that is local in time (each output sample depends on a few input
    samples), so its chunked output can equal its whole-signal output; optionally it
    swaps its two outputs on chunks whose mean is positive, as a real separator may."""
    kernel = torch.tensor([[0.25, 0.5, 0.25]])

    def model(x):                                             # (B, T) -> (B, 2, T)
        smooth = torch.nn.functional.conv1d(x[:, None], kernel[None], padding=1)[:, 0]
        est = torch.stack([smooth * torch.sigmoid(4 * x), x - smooth], 1)
        if swap_when_positive:
            swap = x.mean(-1) > 0
            est = torch.where(swap[:, None, None], est.flip(1), est)
        return est
    return model


def signal(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Slowly drifting mean so that chunks differ in sign (and so in output order).
    return torch.randn(n, generator=g) + 2 * torch.sin(torch.arange(n) / 700.0)


@pytest.mark.parametrize("n, chunk, overlap", [(5000, 1000, 250), (4321, 800, 400),
                                               (3001, 1000, 20), (999, 1000, 100)])
def test_chunked_equals_whole_for_a_time_local_model(n, chunk, overlap):
    x = signal(n)
    model = local_model()
    whole = model(x[None])[0]
    chunked = S.separate_waveform(model, x, chunk, overlap, batch_size=3)
    assert chunked.shape == (2, n)
    # The 3-tap kernel sees zero padding at chunk edges: those samples differ (by design
    # of the model, not of the stitching); everywhere else the outputs are equal.
    inner = ~chunk_edges(n, chunk, overlap)
    assert inner.float().mean() > 0.9
    torch.testing.assert_close(chunked[:, inner], whole[:, inner], rtol=1e-5, atol=1e-5)


def chunk_edges(n, chunk, overlap):
    """Samples within one of a chunk's first or last sample (other than the signal's ends)."""
    starts = S.chunk_starts(n, chunk, overlap)
    edge = torch.zeros(n, dtype=torch.bool)
    for k, s in enumerate(starts):
        if k > 0:
            edge[max(0, s - 1):s + 2] = True
        if k < len(starts) - 1:
            edge[s + chunk - 2:s + chunk + 1] = True
    return edge


def test_pointwise_model_is_reproduced_exactly_everywhere():
    x = signal(7777, seed=3)
    model = lambda b: torch.stack([b * 0.3, b ** 2], 1)  # noqa: E731
    chunked = S.separate_waveform(model, x, 1000, 300)
    torch.testing.assert_close(chunked, model(x[None])[0], rtol=1e-6, atol=1e-6)


def test_sources_swapped_between_chunks_are_aligned():
    x = signal(9000, seed=1)
    starts = S.chunk_starts(9000, 1200, 300)
    means = [float(x[s:s + 1200].mean()) for s in starts]
    assert any(m > 0 for m in means) and any(m <= 0 for m in means)   # swaps happen
    chunked = S.separate_waveform(local_model(swap_when_positive=True), x, 1200, 300)
    whole = local_model()(x[None])[0]
    if means[0] > 0:                # the first chunk fixes the order of the output
        whole = whole.flip(0)
    inner = ~chunk_edges(9000, 1200, 300)
    torch.testing.assert_close(chunked[:, inner], whole[:, inner], rtol=1e-5, atol=1e-5)


def test_align_sources_picks_the_least_squares_permutation():
    prev = torch.stack([torch.ones(50), torch.zeros(50), -torch.ones(50)])
    cur = prev[[2, 0, 1]] + 0.01
    perm = S.align_sources(prev, cur)
    torch.testing.assert_close(cur[perm], prev + 0.01)


def test_bad_overlap_is_rejected():
    with pytest.raises(ValueError, match="overlap"):
        S.separate_waveform(local_model(), signal(3000), 1000, 600)
