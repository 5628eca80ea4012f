"""Static checks of the CUDA kernels, no GPU needed (skipped without nvcc; run in CI,
where .ci/cuda_build.sh installs it): every kernel instance compiles for sm_80 and sm_90
without a register spill, and the fp64 budget of issue 16 holds.

fp64 budget: the fused tile pass and the fused backward with fp16/bf16/fp32 inputs at
C <= 4 issue at most 0.6 fp64 lane-ops per input byte. Counted statically from the SASS
(cuobjdump -sass; tests/cuda_emulation/cuda_tools.py lists the fp64 opcodes):
  - no fp64 instruction inside an innermost loop (the per-sample loops);
  - every other fp64 instruction runs at most once per thread per block (the backward's
    per-row set-up runs once per 32 rows, so once for C <= 32), so a block issues at most
    count x 256 lanes; a full block reads tile x rows x bytes, tile >= 4096 samples
    (pick_tile in ugr_fused_cuda.cu), rows = 2C (+1 mixture row in the forward): the
    budget is count x 256 / (4096 x 2 x itemsize) at C = 1, the fewest bytes per block.
The result is written to build/cuda_static.json (the table in bench/README.md).

Where .ci/cuda_build.sh ran first (CI), its ptxas / SASS reports of the extension's own
.cu files (build/cuda_ci/*.json) are checked instead of compiling the instances again.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_emulation"))
import cuda_tools  # noqa: E402

pytestmark = pytest.mark.skipif(
    cuda_tools.nvcc() is None or cuda_tools.cuobjdump() is None,
    reason="nvcc / cuobjdump not found (.ci/cuda_build.sh installs them)")

ARCHS = ("80", "90")
MIN_TILE = 4096
THREADS = 256
BUDGET = 0.6
ITEMSIZE = {"c10::Half": 2, "c10::BFloat16": 2, "float": 4, "double": 8}


def _fresh_ci_reports():
    """build/cuda_ci/{ptxas,sass_fp64}.json of .ci/cuda_build.sh, if newer than the sources."""
    d = ROOT / "build" / "cuda_ci"
    files = [d / "ptxas.json", d / "sass_fp64.json"]
    sources = [*(ROOT / "csrc" / "cuda").glob("*.cu*"), ROOT / "tests" / "cuda_emulation" /
               "instantiate.cu"]
    newest = max(p.stat().st_mtime for p in sources)
    if all(f.exists() and f.stat().st_mtime > newest for f in files):
        return [json.loads(f.read_text()) for f in files]
    return None


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """One row per (kernel, arch): ptxas registers / spills and the SASS fp64 counts. In
    CI the reports of .ci/cuda_build.sh (the extension's own .cu files) are reused;
    elsewhere tests/cuda_emulation/instantiate.cu (the same instances, no ATen) is compiled."""
    ci = _fresh_ci_reports()
    if ci is not None:
        rows, sass_rows = ci
    else:
        out = tmp_path_factory.mktemp("cuda_static")
        obj = out / "instantiate.o"
        cmd = [cuda_tools.nvcc(), "-c",
               str(ROOT / "tests" / "cuda_emulation" / "instantiate.cu"),
               "-o", str(obj), "-std=c++20", "-O3", "--expt-relaxed-constexpr",
               "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
               "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
               *[f"-I{p}" for p in cuda_tools.torch_includes()], "-Xptxas", "-v"]
        for a in ARCHS:
            cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-5000:]
        rows = cuda_tools.parse_ptxas(r.stdout + r.stderr)
        sass_rows = cuda_tools.sass_fp64(obj)
        names = cuda_tools.demangle([x["kernel"] for x in rows])
        for x in rows:
            x["name"] = names[x["kernel"]]
    sass = {(s["kernel"], s["arch"]): s for s in sass_rows}
    for x in rows:
        x.update({k: v for k, v in sass[(x["kernel"], x["arch"])].items() if k.startswith("fp64")})
    return rows


def _scalar(name: str) -> str:
    return name[name.index("<") + 1:].split(",")[0].split(">")[0].strip()


def test_every_kernel_compiles_without_spills(compiled):
    assert {x["arch"] for x in compiled} == {f"sm_{a}" for a in ARCHS}
    assert len(compiled) >= 2 * 50
    spills = [f"{x['name']} {x['arch']}: {x['spill_stores']}/{x['spill_loads']} B"
              for x in compiled if x["spill_stores"] or x["spill_loads"]]
    assert not spills, spills


def test_fp64_budget_of_the_fused_tile_and_backward_kernels(compiled):
    report = []
    for x in compiled:
        kind = ("tile" if "tile_stats_kernel" in x["name"] else
                "backward" if "fused_backward_kernel" in x["name"] else None)
        if kind is None:
            continue
        scalar = _scalar(x["name"])
        item = ITEMSIZE[scalar]
        rows = 2                                  # C = 1, no mixture: the fewest bytes
        per_byte = x["fp64"] * THREADS / (MIN_TILE * rows * item)
        report.append(dict(kernel=x["name"], arch=x["arch"], registers=x["registers"],
                           spill=x["spill_stores"] + x["spill_loads"], fp64=x["fp64"],
                           fp64_in_inner_loops=x["fp64_in_inner_loops"],
                           fp64_per_byte=round(per_byte, 4)))
        if scalar == "double":
            continue                              # the budget is for 16- and 32-bit inputs
        assert x["fp64_in_inner_loops"] == 0, x
        assert per_byte <= BUDGET, (x["name"], x["arch"], per_byte)
        if kind == "tile":
            assert x["fp64"] == 0, x            # the tile pass has none at all
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "cuda_static.json").write_text(json.dumps(report, indent=1))
    assert len(report) >= 2 * 4 * 10
