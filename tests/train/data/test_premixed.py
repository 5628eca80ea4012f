"""Pre-mixed data sets (train.data.premixed): LibriMix-format manifests and wsj0-mix folders,
written by the tests from real ESC-50 clips; malformed ones stop with one line naming the
file and row."""
import csv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.train.conftest import write_premixed
from train.data.loader import build_splits, catalogs_for, eval_batches
from train.data.premixed import ManifestError, PremixedDataset, read_manifest, wsj0_mix_split


@pytest.fixture(scope="module")
def premixed(data_dir, tmp_path_factory):
    return write_premixed(tmp_path_factory.mktemp("premixed"), data_dir, 3, rows=4, noise=True)


def _rewrite(src: Path, dst: Path, edit) -> Path:
    rows = list(csv.reader(open(src)))
    rows = edit(rows)
    with open(dst, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return dst


def test_manifest_reads_relative_and_absolute_paths(premixed):
    for split in ("tr", "tt"):          # tt holds absolute paths
        s = read_manifest(premixed / f"{split}.csv")
        assert s.num_sources == 3 and len(s.items) == 4 and s.class_names == ("source",)
        assert all(p.is_file() for it in s.items for p in (it.mixture, *it.sources))
    kept = read_manifest(premixed / "tr.csv", keep_noise=True)
    assert kept.num_sources == 4 and kept.class_names == ("source", "noise")
    assert list(kept.labels) == [0, 0, 0, 1]


def test_dataset_gives_the_mixture_as_given(premixed):
    s = read_manifest(premixed / "cv.csv")
    ds = PremixedDataset(s, segment_len=4000, num_items=3)
    assert len(ds) == 3
    ex = ds[1]
    assert ex["sources"].shape == (3, 6400) and ex["mixture"].shape == (6400,)
    mix, _ = sf.read(s.items[1].mixture, dtype="float32")
    scale = mix.std()
    np.testing.assert_allclose(ex["mixture"].numpy() * scale, mix, atol=1e-6)
    # without the noise the sources do not sum to the mixture: nothing remixed
    with_noise = PremixedDataset(read_manifest(premixed / "cv.csv", keep_noise=True), 4000)
    e = with_noise[1]
    np.testing.assert_allclose(e["sources"].sum(0).numpy(), e["mixture"].numpy(), atol=1e-5)
    # evaluation batches: consecutive items of equal length (0.6 s, 0.8 s alternate)
    shapes = [b["mixture"].shape for b in eval_batches(ds, 8)]
    assert shapes == [(1, 4800), (1, 6400), (1, 4800)]


def test_training_crops_are_random_and_deterministic(premixed):
    train = PremixedDataset(read_manifest(premixed / "tr.csv"), 4000, seed=5, train=True)
    a, b, again = train[0], train[1], train[0]
    assert a["mixture"].shape == (4000,) and a["sources"].shape == (3, 4000)
    assert not np.array_equal(a["mixture"], b["mixture"])
    np.testing.assert_array_equal(a["mixture"], again["mixture"])
    long_crop = PremixedDataset(read_manifest(premixed / "tr.csv"), 8000, train=True)[0]
    assert long_crop["mixture"].shape == (8000,)      # shorter items padded at the end
    assert float(long_crop["mixture"][-1000:].abs().max()) == 0.0


def test_wsj0_layout_and_the_one_flow(premixed):
    s = wsj0_mix_split(premixed, "test")
    assert s.num_sources == 3 and [it.name for it in s.items] == [f"tt_{i:03d}" for i in range(4)]
    catalogs, name = catalogs_for("env", wsj0_mix_dir=premixed)
    data = build_splits("env", catalogs, 4000, num_val=2, num_test=4)
    assert data.num_sources == 3 and len(data.val) == 2 and len(data.test) == 4
    assert data.train[7]["sources"].shape == (3, 4000)
    manifests = {"train": premixed / "tr.csv", "val": premixed / "cv.csv",
                 "test": premixed / "tt.csv"}
    catalogs, _ = catalogs_for("env", manifests=manifests, keep_noise=True)
    assert build_splits("env", catalogs, 4000, num_val=2, num_test=2).num_sources == 4
    with pytest.raises(ValueError, match="replaces --data-dir"):
        catalogs_for("env", data_dir=premixed, manifests=manifests)


def test_malformed_manifests_name_file_and_row(premixed, tmp_path, data_dir):
    src = premixed / "tr.csv"
    # a missing column
    bad = _rewrite(src, tmp_path / "nocol.csv",
                   lambda rows: [[c for j, c in enumerate(r) if j != 1] for r in rows])
    with pytest.raises(ManifestError, match=r"nocol.csv: no 'mixture_path' column"):
        read_manifest(bad)
    # a missing file (paths relative to the CSV's folder: write it next to the original)
    def drop_file(rows):
        rows[3][rows[0].index("source_2_path")] = "tr/s2/nowhere.wav"
        return rows
    bad = _rewrite(src, premixed / "missing.csv", drop_file)
    with pytest.raises(ManifestError) as exc:
        read_manifest(bad)
    msg = str(exc.value)
    assert "missing.csv row 3" in msg and "nowhere.wav" in msg and "not found" in msg
    assert "\n" not in msg
    # a wrong sample rate
    x, _ = sf.read(premixed / "tr" / "s1" / "tr_001.wav", dtype="float32")
    sf.write(premixed / "tr" / "s1" / "rate16k.wav", x, 16000)
    def wrong_rate(rows):
        rows[2][rows[0].index("source_1_path")] = "tr/s1/rate16k.wav"
        return rows
    bad = _rewrite(src, premixed / "rate.csv", wrong_rate)
    with pytest.raises(ManifestError, match=r"rate.csv row 2: .*rate16k.wav: sample rate is "
                                            r"16000 Hz but 8000 Hz"):
        read_manifest(bad)
    # a row with a wrong source count
    def short_row(rows):
        rows[4][rows[0].index("source_3_path")] = ""
        return rows
    bad = _rewrite(src, premixed / "count.csv", short_row)
    with pytest.raises(ManifestError, match=r"count.csv row 4: 2 source path\(s\), the "
                                            r"manifest's header has 3 \(source_3_path"):
        read_manifest(bad)
    # a source of another length than its mixture
    sf.write(premixed / "tr" / "s1" / "short.wav", x[:100], 8000)
    def short_file(rows):
        rows[1][rows[0].index("source_1_path")] = "tr/s1/short.wav"
        return rows
    bad = _rewrite(src, premixed / "length.csv", short_file)
    with pytest.raises(ManifestError, match=r"length.csv row 1: .*short.wav has 100 samples"):
        read_manifest(bad)
    # splits with different source counts
    two = write_premixed(tmp_path / "two", data_dir, 2, rows=2)
    with pytest.raises(ManifestError, match="2 sources, but .* has 3"):
        catalogs_for("env", manifests={"train": src, "val": two / "cv.csv",
                                       "test": two / "tt.csv"})


def test_wsj0_missing_source_file(premixed, tmp_path):
    import shutil
    root = tmp_path / "w"
    shutil.copytree(premixed / "cv", root / "cv")
    (root / "cv" / "s2" / "cv_001.wav").unlink()
    with pytest.raises(ManifestError, match=r"cv/mix/cv_001.wav: .*cv/s2/cv_001.wav: file "
                                            r"not found"):
        wsj0_mix_split(root, "val")
    with pytest.raises(ManifestError, match="tt/mix: missing"):
        wsj0_mix_split(root, "test")
