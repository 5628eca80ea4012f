"""Procedural default data (train.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from train.data.sources import load_sources
from train.data.synthetic import (
    ENV_CLASSES,
    F0_MAX,
    F0_MIN,
    env_like,
    make_speaker,
    speech_like,
    synthetic_catalog,
)

SR = 8000


def _frame_pitches(x, frame=800, hop=400):
    """Autocorrelation pitch (Hz) of the loud frames (lags 2.5-25 ms)."""
    loud = np.sqrt(np.mean(x.astype(np.float64) ** 2))
    out = []
    for a in range(0, x.size - frame, hop):
        f = x[a:a + frame].astype(np.float64)
        if np.sqrt(np.mean(f * f)) < 0.5 * loud:
            continue
        f -= f.mean()
        ac = np.correlate(f, f, "full")[frame - 1:]
        lag = 20 + int(np.argmax(ac[20:200]))  # search 40-400 Hz, wider than 80-250
        if ac[lag] > 0.3 * ac[0]:  # clearly periodic
            out.append(SR / lag)
    return np.array(out)


def test_speech_like_deterministic_finite_nonsilent():
    a = speech_like(0, 3, 1.5)
    assert a.dtype == np.float32 and a.shape == (12000,)
    assert np.array_equal(a, speech_like(0, 3, 1.5))
    assert not np.array_equal(a, speech_like(0, 4, 1.5))
    assert not np.array_equal(a, speech_like(1, 3, 1.5))
    assert np.isfinite(a).all() and np.abs(a).max() < 1
    assert np.sqrt(np.mean(a.astype(np.float64) ** 2)) > 1e-3


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_speech_like_has_pitch_and_pauses(index):
    spk = make_speaker(5, index)
    assert F0_MIN <= spk.f0 <= F0_MAX
    x = speech_like(5, index, 2.0, spk)
    p = _frame_pitches(x)
    assert p.size >= 5, "no periodic (voiced) frames found"
    # most voiced frames have a pitch in the speech range (octave errors aside)
    assert np.mean((p >= F0_MIN - 5) & (p <= F0_MAX + 5)) > 0.8
    assert abs(np.median(p) - spk.f0) < 0.3 * spk.f0
    # syllables with pauses: a good share of 20 ms frames is far below the mean
    e = np.sqrt(np.mean(x[: x.size // 160 * 160].reshape(-1, 160).astype(np.float64) ** 2, 1))
    assert np.mean(e < 0.05 * e.mean()) > 0.1


@pytest.mark.parametrize("kind", ENV_CLASSES)
def test_env_like(kind):
    x = env_like(kind, 0, 1, 1.0)
    assert x.dtype == np.float32 and x.shape == (8000,)
    assert np.array_equal(x, env_like(kind, 0, 1, 1.0))
    assert not np.array_equal(x, env_like(kind, 0, 2, 1.0))
    assert np.isfinite(x).all() and np.abs(x).max() < 1
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) > 1e-3
    with pytest.raises(ValueError):
        env_like("music", 0)


def test_synthetic_catalog_interface():
    cats = synthetic_catalog(num_speakers=6, clips_per_speaker=2, env_per_class=3,
                             speech_seconds=0.5, env_seconds=0.5, seed=1)
    sp, env = cats["speech"], cats["env"]
    assert len(sp) == 12 and sp.classes == ("speech",) and len(sp.groups) == 6
    assert env.classes == ENV_CLASSES and len(env) == 15
    groups = {s: set(sp.split(s).groups) for s in ("train", "val", "test")}
    assert len(groups["val"]) >= 2 and len(groups["test"]) >= 2  # speech task needs 2
    assert not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    for s in ("train", "val", "test"):
        assert set(env.split(s).counts("label")) == set(ENV_CLASSES)
    bank = load_sources(env, progress=False)
    assert bank.lengths.tolist() == [4000] * 15
    again = synthetic_catalog(num_speakers=6, clips_per_speaker=2, env_per_class=3,
                              speech_seconds=0.5, env_seconds=0.5, seed=1)
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(sp, again["speech"]))
