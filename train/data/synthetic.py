"""Procedural default data: speech-like and environmental-like sources.

So that training, tests and demos run anywhere without audio files, this
module synthesises 8 kHz sources, deterministically from a seed:

* speech-like (:func:`speech_like`): additive synthesis of a voiced source
  (harmonics of a smoothly varying pitch, 80-250 Hz, with a -6 dB/octave
  tilt), shaped by three time-varying formant resonances that move between
  vowel targets, a syllable-like amplitude envelope with pauses, and short
  fricative noise bursts. Each fake speaker (:class:`Speaker`) has its own
  pitch range and vocal-tract scale, so "two different speakers" is
  meaningful.
* environmental-like (:func:`env_like`), one class per kind in
  :data:`ENV_CLASSES`: coloured noise bursts, impacts (decaying modal
  resonances with a click), tonal events (beeps, chirps, sirens), engine hum
  (low harmonic drone with firing-rate modulation) and crackle (sparse random
  clicks).

It is not meant to sound natural, only to give a separation model signals
with the structure that matters (pitch, formants, onsets, spectral colour).
Everything is vectorised NumPy; one 4 s clip takes a few milliseconds.

:func:`synthetic_catalog` wraps the generators in the catalogue interface of
:mod:`train.data.catalogs` (in-memory items with labels, groups and splits), so
the ``env``, ``speech`` and ``mixed`` tasks work unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE
from .catalogs import SourceCatalog, SourceItem

__all__ = [
    "ENV_CLASSES",
    "Speaker",
    "make_speaker",
    "speech_like",
    "env_like",
    "synthetic_speech_catalog",
    "synthetic_env_catalog",
    "synthetic_catalog",
]

SR = SAMPLE_RATE
ENV_CLASSES = ("noise", "impact", "tonal", "engine", "crackle")
F0_MIN, F0_MAX = 80.0, 250.0

# Stream tags so speech, env and speaker draws never share random streams.
_TAG_SPEAKER, _TAG_SPEECH, _TAG_ENV = 1, 2, 3

# (F1, F2, F3) vowel targets in Hz for an average adult vocal tract.
_VOWELS = np.array([
    [280, 2250, 2900],  # i
    [400, 2000, 2600],  # e
    [700, 1200, 2600],  # a
    [550, 900, 2500],   # o
    [320, 800, 2300],   # u
    [500, 1500, 2500],  # schwa
    [600, 1700, 2500],  # ae-ish
])
_BANDWIDTHS = np.array([70.0, 100.0, 160.0])


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average of odd-ish ``width`` samples with edge padding."""
    if width <= 1:
        return x
    pad = width // 2
    xp = np.pad(x, (pad, width - 1 - pad), mode="edge")
    c = np.cumsum(np.concatenate([[0.0], xp]))
    return (c[width:] - c[:-width]) / width


def _fft_filter(x: np.ndarray, gain_fn) -> np.ndarray:
    """Zero-phase filter of a whole signal by a magnitude response
    ``gain_fn(freqs_hz) -> gains`` (circular, fine for noise shaping)."""
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(x.size, 1.0 / SR)
    return np.fft.irfft(spec * gain_fn(f), n=x.size)


def _band(f: np.ndarray, lo: float = 0.0, hi: float = np.inf, order: int = 4) -> np.ndarray:
    """Butterworth-like band-pass magnitude (smooth edges, so filtered clicks
    do not ring at the cut-off as a brick-wall mask would)."""
    f = np.maximum(f, 1e-3)
    g = np.ones_like(f)
    if lo > 0:
        g /= np.sqrt(1 + (lo / f) ** (2 * order))
    if np.isfinite(hi):
        g /= np.sqrt(1 + (f / hi) ** (2 * order))
    return g


def _set_rms(x: np.ndarray, rms: float) -> np.ndarray:
    cur = np.sqrt(np.mean(x * x))
    return x * (rms / cur) if cur > 0 else x


def _finish(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random playback level (RMS -26..-14 dBFS), peak-limited below 1."""
    x = x - x.mean()
    x = _set_rms(x, 10 ** (rng.uniform(-26, -14) / 20))
    peak = np.abs(x).max()
    if peak > 0.99:
        x *= 0.99 / peak
    return x.astype(np.float32)


# --------------------------------------------------------------------------- speech

@dataclass(frozen=True)
class Speaker:
    """A fake speaker.

    Attributes:
        f0: median pitch in Hz (kept so that the contour stays in 80-250 Hz).
        f0_spread: pitch excursion, standard deviation in semitones.
        formant_scale: vocal-tract scale (formants multiplied by it).
        rate: syllables-per-second scale (1 = average).
        breathiness: level of aspiration noise relative to voicing.
    """

    f0: float
    f0_spread: float
    formant_scale: float
    rate: float
    breathiness: float


def make_speaker(seed: int, index: int) -> Speaker:
    """Speaker ``index`` of the population drawn with ``seed``."""
    r = _rng(seed, _TAG_SPEAKER, index)
    # Low and high voices; a shorter tract (higher formants) with a higher pitch.
    high = r.random() < 0.5
    f0 = r.uniform(150, 210) if high else r.uniform(95, 140)
    scale = r.uniform(1.05, 1.18) if high else r.uniform(0.88, 1.02)
    return Speaker(f0=f0, f0_spread=r.uniform(1.0, 2.5), formant_scale=scale,
                   rate=r.uniform(0.8, 1.25), breathiness=r.uniform(0.005, 0.02))


def _syllable_plan(r: np.random.Generator, n: int, rate: float):
    """Syllables as (start, end) sample indices with pauses in between."""
    syl = []
    t = int(r.uniform(0.02, 0.25) * SR)
    while True:
        dur = int(r.uniform(0.12, 0.32) / rate * SR)
        if t + dur > n:
            break
        syl.append((t, t + dur))
        gap = r.uniform(0.03, 0.12) if r.random() > 0.25 else r.uniform(0.2, 0.5)
        t += dur + int(gap / rate * SR)
    if not syl:  # very short clips: one syllable filling most of it
        a = int(0.05 * n)
        syl.append((a, max(a + 1, n - a)))
    return syl


def speech_like(seed: int, index: int = 0, seconds: float = 4.0,
                speaker: Speaker | None = None) -> np.ndarray:
    """One speech-like utterance.

    Args:
        seed, index: the clip is a deterministic function of (seed, index).
        seconds: length.
        speaker: voice parameters; default ``make_speaker(seed, index)``.

    Returns:
        ``(round(seconds * 8000),)`` float32, zero mean, RMS in -26..-14 dBFS.
    """
    r = _rng(seed, _TAG_SPEECH, index)
    spk = speaker or make_speaker(seed, index)
    n = int(round(seconds * SR))
    t = np.arange(n)

    # Amplitude envelope: per syllable u^a (1-u)^b, quick attack, slower decay.
    env = np.zeros(n)
    fric = np.zeros(n)
    syl = _syllable_plan(r, n, spk.rate)
    # Formant keypoints (times, F1..F3): consonant locus at onset -> vowel target.
    kt, kf = [0], [_VOWELS[5]]
    for a, b in syl:
        u = (t[a:b] - a) / max(b - a, 1)
        env[a:b] = r.uniform(0.5, 1.0) * (u ** 0.6) * ((1 - u) ** 1.2) * 3.2
        v = _VOWELS[r.integers(len(_VOWELS))] * r.uniform(0.93, 1.07, 3)
        locus = np.array([250.0, r.choice([900.0, 1500.0, 1900.0]), 2600.0])
        kt += [a, a + int(0.3 * (b - a)), b]
        kf += [locus, v, v]
        if r.random() < 0.35:  # fricative-like noise burst before the vowel
            fl = int(r.uniform(0.04, 0.1) * SR)
            fa = max(0, a - fl // 2)
            w = np.hanning(min(fl, n - fa))
            fric[fa:fa + w.size] += w * r.uniform(0.2, 0.6)
    kt.append(n - 1)
    kf.append(kf[-1])
    kt = np.asarray(kt, dtype=float)
    kf = np.asarray(kf) * spk.formant_scale
    formants = np.stack([_smooth(np.interp(t, kt, kf[:, j]), 161) for j in range(3)])

    # Pitch: random keypoints every ~0.25 s in semitones around the median,
    # a falling declination, smoothed, then clamped to 80-250 Hz.
    step = int(0.25 * SR)
    kp_t = np.arange(0, n + step, step)
    semis = r.normal(0.0, spk.f0_spread, kp_t.size) - np.linspace(0, 2.0, kp_t.size)
    f0 = spk.f0 * 2 ** (_smooth(np.interp(t, kp_t, semis), 401) / 12)
    f0 += 0.003 * f0 * r.standard_normal(n).cumsum() / np.sqrt(n)  # slow jitter
    f0 = np.clip(f0, F0_MIN + 2, F0_MAX - 2)

    # Additive synthesis. Harmonic k at frequency k*f0(t) with amplitude
    # tilt(k) * |H(k f0)|, H = cascade of formant resonators; harmonics above
    # 3.8 kHz are dropped (no aliasing). sin(k phi) by the Chebyshev
    # recurrence (no per-harmonic trig); amplitudes on a 10 ms grid.
    phase = 2 * np.pi * np.cumsum(f0) / SR + r.uniform(0, 2 * np.pi)
    hop = 80
    nfr = -(-n // hop)
    pad = nfr * hop - n
    f0g = np.append(f0[::hop], f0[-1])              # (nfr+1,) frame edges
    fmg = np.concatenate([formants[:, ::hop], formants[:, -1:]], axis=1)
    ramp = (np.arange(hop) / hop).astype(np.float32)
    bw = _BANDWIDTHS * spk.formant_scale
    ph = np.pad(phase, (0, pad)).astype(np.float32).reshape(nfr, hop)
    c = 2 * np.cos(ph)
    s_prev, s_cur = np.zeros_like(ph), np.sin(ph)
    voiced = np.zeros_like(ph)
    for k in range(1, int(3800 // f0.min()) + 1):
        fk = k * f0g
        gain = (fk < 3800) / k
        for j in range(3):
            F = fmg[j]
            gain = gain * F * F / np.sqrt((F * F - fk * fk) ** 2 + (bw[j] * fk) ** 2)
        gain = gain.astype(np.float32)
        # linear interpolation of the amplitude inside each 10 ms frame
        amp = gain[:-1, None] + (gain[1:] - gain[:-1])[:, None] * ramp
        voiced += amp * s_cur
        s_prev, s_cur = s_cur, c * s_cur - s_prev
    voiced = voiced.reshape(-1)[:n].astype(np.float64)

    noise = r.standard_normal(n)
    hiss = _fft_filter(noise, lambda f: _band(f, 2000, 3700))
    breath = _fft_filter(r.standard_normal(n),
                         lambda f: _band(f, 300, 3500) * (300 / np.maximum(f, 300)))
    vs = np.sqrt(np.mean(voiced ** 2)) + 1e-12
    x = env * (voiced / vs + spk.breathiness * breath / (breath.std() + 1e-12))
    x += 0.5 * fric * hiss / (hiss.std() + 1e-12)
    return _finish(x, r)


# --------------------------------------------------------------------------- env

def _burst_env(r, n, max_bursts=3):
    """Sum of 1..max_bursts raised-cosine-edged bursts (attack/sustain/release)."""
    e = np.zeros(n)
    for _ in range(r.integers(1, max_bursts + 1)):
        dur = int(r.uniform(0.3, 0.6) * n)
        a = r.integers(0, max(1, n - dur))
        att = int(r.uniform(0.005, 0.2) * SR)
        rel = int(r.uniform(0.02, 0.5) * SR)
        seg = np.ones(dur)
        att, rel = min(att, dur // 2), min(rel, dur // 2)
        seg[:att] = np.linspace(0, 1, att)
        if rel:
            seg[-rel:] = np.linspace(1, 0, rel)
        e[a:a + dur] = np.maximum(e[a:a + dur], seg * r.uniform(0.4, 1.0))
    return e


def _env_noise(r, n):
    slope = r.uniform(0.0, 2.0)  # 0 white, 1 pink, 2 brown
    lo, hi = sorted(r.uniform(50, 3900, 2))
    lo, hi = (lo, hi) if hi - lo > 300 else (50.0, 3900.0)
    x = _fft_filter(r.standard_normal(n),
                    lambda f: (np.maximum(f, 20) ** (-slope / 2)) * _band(f, lo, hi))
    if r.random() < 0.4:  # stationary (rain/wind-like) with slow modulation
        m = 1 + 0.5 * np.sin(2 * np.pi * r.uniform(0.1, 1.5) * np.arange(n) / SR
                             + r.uniform(0, 6.3))
        return x * m
    return x * _burst_env(r, n)


def _env_impact(r, n):
    x = np.zeros(n)
    t = np.arange(n) / SR
    for _ in range(r.integers(1, 9)):
        at = r.integers(0, n - 1)
        tt = t[: n - at]
        hit = np.zeros(n - at)
        for _ in range(r.integers(2, 5)):  # modal resonances
            f, tau = r.uniform(100, 3500), r.uniform(0.01, 0.3)
            phase = r.uniform(0, 6.3)
            hit += r.uniform(0.2, 1) * np.exp(-tt / tau) * np.sin(2 * np.pi * f * tt + phase)
        cl = min(int(r.uniform(0.001, 0.005) * SR), hit.size)
        hit[:cl] += r.standard_normal(cl) * 2  # contact click
        x[at:] += r.uniform(0.2, 1.0) * hit
    return x


def _env_tonal(r, n):
    t = np.arange(n) / SR
    kind = r.integers(3)
    if kind == 0:  # beeps: fixed tone switched on and off
        f = np.full(n, r.uniform(400, 3000))
        period, duty = r.uniform(0.15, 1.0), r.uniform(0.2, 0.7)
        gate = ((t / period) % 1.0) < duty
        gate = _smooth(gate.astype(float), 24)
    elif kind == 1:  # chirps: exponential sweeps
        f0, f1 = r.uniform(200, 3500, 2)
        dur = r.uniform(0.2, 1.5)
        u = (t % dur) / dur
        f = f0 * (f1 / f0) ** u
        gate = _smooth((u < 0.8).astype(float), 24)
    else:  # siren: slow frequency modulation
        fc, dev, rate = r.uniform(500, 1800), r.uniform(100, 600), r.uniform(0.3, 3)
        f = fc + dev * np.sin(2 * np.pi * rate * t)
        gate = np.ones(n)
    phase = 2 * np.pi * np.cumsum(f) / SR
    x = np.zeros(n)
    for k in range(1, r.integers(1, 4) + 1):  # a few harmonics below 3.9 kHz
        x += (k * f < 3900) * np.sin(k * phase) / k ** 1.5
    return x * gate


def _env_engine(r, n):
    t = np.arange(n) / SR
    f0 = r.uniform(25, 60) * (1 + 0.05 * np.sin(2 * np.pi * r.uniform(0.05, 0.5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    x = np.zeros(n)
    for k in range(1, 40):
        x += (k * f0 < 3800) * np.sin(k * phase + r.uniform(0, 6.3)) / k ** r.uniform(0.7, 1.3)
    am = 1 + r.uniform(0.2, 0.8) * np.sin(phase / r.integers(1, 3))  # firing rhythm
    rumble = _fft_filter(r.standard_normal(n), lambda f: _band(f, 0, 400))
    return x * am + rumble * r.uniform(1, 4)


def _env_crackle(r, n):
    rate = r.uniform(5, 80)  # clicks per second
    count = r.poisson(rate * n / SR) + 1
    x = np.zeros(n)
    pos = r.integers(0, n, count)
    np.add.at(x, pos, r.pareto(2.0, count) * r.choice([-1, 1], count))
    decay = np.exp(-np.arange(int(0.006 * SR)) / (r.uniform(0.0005, 0.002) * SR))
    x = np.convolve(x, decay * r.standard_normal(decay.size), mode="same")
    lo = r.uniform(100, 1500)
    return _fft_filter(x, lambda f: _band(f, lo, 3800))


_ENV_FUNCS = {"noise": _env_noise, "impact": _env_impact, "tonal": _env_tonal,
              "engine": _env_engine, "crackle": _env_crackle}


def env_like(kind: str, seed: int, index: int = 0, seconds: float = 5.0) -> np.ndarray:
    """One environmental-like clip of class ``kind`` (see :data:`ENV_CLASSES`).

    Returns:
        ``(round(seconds * 8000),)`` float32, zero mean, RMS in -26..-14 dBFS,
        a deterministic function of (kind, seed, index).
    """
    if kind not in _ENV_FUNCS:
        raise ValueError(f"unknown env kind {kind!r}; choose from {ENV_CLASSES}")
    r = _rng(seed, _TAG_ENV, ENV_CLASSES.index(kind), index)
    n = int(round(seconds * SR))
    return _finish(_ENV_FUNCS[kind](r, n), r)


# --------------------------------------------------------------------------- catalogues

def _split_counts(n: int, fractions=(0.8, 0.1, 0.1), min_eval: int = 1) -> tuple[int, int, int]:
    """Sizes (train, val, test) for n groups, with at least ``min_eval`` in
    val and test whenever n allows it."""
    n_val = max(min_eval, int(round(fractions[1] * n))) if n >= 2 * min_eval + 1 else 0
    n_test = max(min_eval, int(round(fractions[2] * n))) if n >= 2 * min_eval + 1 else 0
    return n - n_val - n_test, n_val, n_test


def _split_of(j: int, counts) -> str:
    return "train" if j < counts[0] else ("val" if j < counts[0] + counts[1] else "test")


def synthetic_speech_catalog(num_speakers: int = 40, clips_per_speaker: int = 8,
                             seconds: float = 4.0, seed: int = 0) -> SourceCatalog:
    """Speech-like clips of fake speakers, split by speaker.

    Speakers 0..n-1 go in order to train/val/test with about 80/10/10 % and
    at least 2 speakers in val and test (the speech task needs two different
    speakers) when ``num_speakers >= 5``. Label ``"speech"``, group
    ``"spkNNN"``.
    """
    counts = _split_counts(num_speakers, min_eval=2)
    items = []
    for s in range(num_speakers):
        spk = make_speaker(seed, s)
        for c in range(clips_per_speaker):
            idx = s * clips_per_speaker + c
            items.append(SourceItem(
                key=f"synthetic/speech/spk{s:03d}_{c:02d}", label="speech",
                group=f"spk{s:03d}", split=_split_of(s, counts),
                audio=speech_like(seed, idx, seconds, spk),
                meta={"f0": f"{spk.f0:.1f}"},
            ))
    return SourceCatalog(items, name="synthetic-speech", classes=["speech"])


def synthetic_env_catalog(clips_per_class: int = 40, seconds: float = 5.0,
                          seed: int = 0, classes=ENV_CLASSES) -> SourceCatalog:
    """Environmental-like clips, ``clips_per_class`` of each class in
    ``classes``, each clip its own group, split per class about 80/10/10."""
    counts = _split_counts(clips_per_class, min_eval=1)
    items = []
    for kind in classes:
        for c in range(clips_per_class):
            items.append(SourceItem(
                key=f"synthetic/env/{kind}_{c:03d}", label=kind,
                group=f"{kind}_{c:03d}", split=_split_of(c, counts),
                audio=env_like(kind, seed, c, seconds),
            ))
    return SourceCatalog(items, name="synthetic-env", classes=list(classes))


def synthetic_catalog(num_speakers: int = 40, clips_per_speaker: int = 8,
                      env_per_class: int = 40, speech_seconds: float = 2.5,
                      env_seconds: float = 5.0, seed: int = 0) -> dict[str, SourceCatalog]:
    """Both synthetic catalogues: ``{"speech": ..., "env": ...}``.

    Defaults: 320 speech clips of 2.5 s (40 speakers, 32/4/4 train/val/test)
    and 200 env clips of 5 s (5 classes, 32/4/4 per class), about 30 minutes
    of audio, generated in a few seconds. Speech clips shorter than the 4 s
    segment are joined per speaker by the speech task, as with real data;
    env clips longer than it give varied random crops.
    """
    return {
        "speech": synthetic_speech_catalog(num_speakers, clips_per_speaker, speech_seconds, seed),
        "env": synthetic_env_catalog(env_per_class, env_seconds, seed),
    }
