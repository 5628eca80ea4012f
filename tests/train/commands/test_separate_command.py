"""python -m train.separate (train.commands.separate): files of any rate, channels and
length end to end, a real mixture through a trained model, and bad input."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model import build_model
from train import separate
from train.evaluation import separation as S
from train.run_folder import load_trained, save_checkpoint

ROOT = Path(__file__).resolve().parents[3]


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
    written = separate.main([str(checkpoint), str(a), str(b), str(c), "--out-dir", str(out),
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
    model, _ = load_trained(checkpoint)
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
        separate.main([str(checkpoint), str(good), str(bad), "--out-dir", str(out)])
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
        separate.main([str(tmp_path / "no-run"), str(good), "--out-dir", str(tmp_path / "out")])
    assert "no checkpoint at" in capsys.readouterr().err


def test_help_states_chunk_and_overlap():
    text = separate.build_parser().format_help()
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
    from train.commands.train import parse_args
    from train.run.trainer import Trainer

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
    separate.main([str(run), str(tmp_path / "mix.wav"), "--out-dir", str(tmp_path / "out"),
            "--chunk-seconds", "1", "--overlap-seconds", "0.25", "--no-progress"])
    chunked = np.stack([sf.read(tmp_path / "out" / f"mix_s{k}.wav")[0] for k in (1, 2)])
    separate.main([str(run), str(tmp_path / "mix.wav"), "--out-dir", str(tmp_path / "whole"),
            "--chunk-seconds", "60", "--no-progress"])
    whole = np.stack([sf.read(tmp_path / "whole" / f"mix_s{k}.wav")[0] for k in (1, 2)])
    assert chunked.shape == whole.shape == (2, n)
    # Up to one order for the whole file (the first chunk fixes it), each chunked source is
    # close to the whole-file one: the alignment held across the 5 chunk boundaries.
    corr = max(min(np.corrcoef(chunked[k], whole[p])[0, 1] for k, p in enumerate(perm))
               for perm in ((0, 1), (1, 0)))
    assert corr > 0.8, corr
