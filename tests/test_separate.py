"""train.separate: chunked separation equals whole-signal separation, source alignment
between chunks, file handling end to end (rates, channels, lengths), and bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model import build_model
from train import separate as S
from train.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


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


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An (untrained) tiny SuDoRM-RF in the checkpoint format of python -m train."""
    torch.manual_seed(0)
    net = build_model("sudormrf-tiny", num_sources=2)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_checkpoint({"model": net.state_dict(), "step": 7,
                     "args": {"model": "sudormrf-tiny", "segment_seconds": 0.5}}, path)
    return path


def write(path, seconds, rate, channels=1, seed=0, **kw):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * rng.standard_normal(t.size)
    data = np.stack([tone * (1 + 0.2 * c) for c in range(channels)], 1)
    sf.write(path, data if channels > 1 else data[:, 0], rate, **kw)
    return path


def test_files_of_any_rate_and_channels_give_sources_as_long_as_the_input(tmp_path, checkpoint,
                                                                          capsys):
    a = write(tmp_path / "a.wav", 1.3, 44100, channels=2)
    b = write(tmp_path / "b.flac", 0.3, 8000)
    c = write(tmp_path / "c.ogg", 1.0, 16000, format="OGG", subtype="VORBIS")
    out = tmp_path / "out"
    written = S.main([str(checkpoint), str(a), str(b), str(c), "--out-dir", str(out),
                      "--no-progress", "--threads", "1"])
    assert sorted(p.name for p in written) == ["a_s1.wav", "a_s2.wav", "b_s1.wav", "b_s2.wav",
                                               "c_s1.wav", "c_s2.wav"]
    for name, path in (("a", a), ("b", b), ("c", c)):
        info = sf.info(str(path))
        for k in (1, 2):
            y, rate = sf.read(out / f"{name}_s{k}.wav")
            assert rate == info.samplerate and y.shape == (info.frames,)
            assert np.isfinite(y).all()
    text = capsys.readouterr().out
    assert "2 channels averaged to mono" in text and "overlapping by 0.125 s" in text
    assert not list(out.glob(".*"))                        # no temporary files left


def test_a_file_shorter_than_a_chunk_is_one_model_call(tmp_path, checkpoint):
    x = torch.from_numpy(sf.read(write(tmp_path / "x.wav", 0.4, 8000))[0]).float()
    model, _ = S.load_trained(checkpoint)
    x = (x - x.mean()) / x.std()
    with torch.inference_mode():
        direct = model(x[None])[0]
    torch.testing.assert_close(S.separate_waveform(model, x, 4000, 1000), direct)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b"not audio at all"), "unreadable"),
    (lambda p: sf.write(p, np.zeros(0), 8000), "empty"),
    (lambda p: sf.write(p, np.ones(100) * 0.1, 8000), "too short"),
    (lambda p: None, "not found"),
])
def test_bad_files_give_a_clear_error_naming_the_file_and_write_nothing(tmp_path, checkpoint,
                                                                        make, message, capsys):
    good = write(tmp_path / "good.wav", 0.5, 8000)
    bad = tmp_path / "bad.wav"
    make(bad)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        S.main([str(checkpoint), str(good), str(bad), "--out-dir", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err
    assert not out.exists() or not any(out.iterdir())


def test_command_line_error_is_one_line_without_traceback(tmp_path, checkpoint):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"\x00" * 100)
    proc = subprocess.run([sys.executable, "-m", "train.separate", str(checkpoint), str(bad),
                           "--out-dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {bad}: ") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_run_is_a_clear_error(tmp_path, capsys):
    good = write(tmp_path / "good.wav", 0.5, 8000)
    with pytest.raises(SystemExit):
        S.main([str(tmp_path / "no-run"), str(good), "--out-dir", str(tmp_path / "out")])
    assert "no checkpoint at" in capsys.readouterr().err


def test_help_states_chunk_and_overlap():
    text = S.build_parser().format_help()
    for flag in ("--chunk-seconds", "--overlap-seconds", "--out-dir", "--device", "soxr"):
        assert flag in text


def esc50_csv(data_dir, out, categories=("dog", "rooster", "rain", "crying_baby")):
    """A --data-csv of a few ESC-50 classes (folds 1-3 train, 4 val, 5 test): quick to load."""
    import csv
    rows = list(csv.DictReader(open(data_dir / "esc50" / "meta.csv")))
    with open(out, "w") as f:
        f.write("filename,label,split\n")
        for r in rows:
            if r["category"] in categories:
                split = {"4": "val", "5": "test"}.get(r["fold"], "train")
                f.write(f"{data_dir / 'esc50' / r['filename']},{r['category']},{split}\n")
    return out


def test_real_mixture_is_separated_with_a_trained_model(tmp_path, data_dir):
    """Train briefly on real environmental sounds, then separate a real speech + dog
    mixture longer than a chunk; the chunked result must be close to the whole-file one."""
    from train.cli import parse_args
    from train.loop import Trainer

    run = tmp_path / "run"
    Trainer(parse_args(["--data-csv", str(esc50_csv(data_dir, tmp_path / "esc.csv")),
                        "--model", "sudormrf-tiny", "--segment-seconds", "0.5", "--steps", "20",
                        "--eval-every", "0", "--val-items", "4", "--test-items", "4",
                        "--no-progress", "--threads", "1", "--fused", "--run-dir",
                        str(run)])).run()
    speech, _ = sf.read(data_dir / "speech" / "fsdd" / "0_george_0.flac")
    env, _ = sf.read(data_dir / "esc50" / "1-100032-A-0.flac")
    n = min(speech.size * 4, env.size)
    mix = np.tile(speech, 4)[:n] / np.std(speech) + env[:n] / np.std(env)
    sf.write(tmp_path / "mix.wav", mix, 8000)
    S.main([str(run), str(tmp_path / "mix.wav"), "--out-dir", str(tmp_path / "out"),
            "--chunk-seconds", "1", "--overlap-seconds", "0.25", "--no-progress"])
    chunked = np.stack([sf.read(tmp_path / "out" / f"mix_s{k}.wav")[0] for k in (1, 2)])
    S.main([str(run), str(tmp_path / "mix.wav"), "--out-dir", str(tmp_path / "whole"),
            "--chunk-seconds", "60", "--no-progress"])
    whole = np.stack([sf.read(tmp_path / "whole" / f"mix_s{k}.wav")[0] for k in (1, 2)])
    assert chunked.shape == whole.shape == (2, n)
    # Up to one order for the whole file (the first chunk fixes it), each chunked source is
    # close to the whole-file one: the alignment held across the 5 chunk boundaries.
    corr = max(min(np.corrcoef(chunked[k], whole[p])[0, 1] for k, p in enumerate(perm))
               for perm in ((0, 1), (1, 0)))
    assert corr > 0.8, corr
