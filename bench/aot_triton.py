"""Ahead-of-time compile every Triton specialization the launch code requests, on a CPU.

No GPU is needed: the launch code of ``ugr_kernels.backends.triton`` (the fused ops and
the two-pass ``stats``/``combine``) runs on fake CUDA tensors (``FakeTensorMode``) with
``launch`` swapped for a recorder, over the whole request space:

* fused forward + backward: fp16/bf16/fp32/fp64, C = 1..6, with/without mixture, both
  granularities, PIT on/off, bias/mask on/off, clamp on/off, zero_mean on/off, every
  combination of incoming gradients;
* two-pass (the path that serves C > 6, score functions and ref gradients): the same
  dtypes, C = 1..16, stats of (est, ref) and (mixture, ref), combine for est, ref and
  mixture gradients, every configuration the launch code can pick.

Each distinct specialization (kernel, argument types, constexprs, num_warps) is
compiled by Triton for sm_80, sm_89 and sm_90 (``triton.compile`` with a ``GPUTarget``),
its PTX is assembled by the wheel's ``ptxas -v`` (registers, spill bytes, shared memory)
and its cubin disassembled by ``cuobjdump -sass`` (static instruction counts, and the
fp64-pipe instructions: D* opcodes and conversions to or from F64).

``fp64/B`` is the static count of fp64-pipe SASS instructions x 32 lanes x num_warps
divided by the input bytes one program reads (the samples of its tile: est and ref rows,
plus the mixture row for the forward tile), for the kernels whose programs walk one
T-tile without loops (tile, backward, stats tile, combine); '-' elsewhere.

Usage::

    python bench/aot_triton.py                 # everything, table on stdout, fail on spill
    python bench/aot_triton.py --two-pass-dtypes float32 bfloat16 --two-pass-archs 90
                                               # CI: the fused path in full, two-pass sampled
    python bench/aot_triton.py --json out.json --markdown table.md
    python bench/aot_triton.py --budget 0.6    # also fail where the fp64 budget is missed

Exit status 1 on a compile error or any spill (or a missed ``--budget``). Results are
cached in ``$UGR_AOT_CACHE`` (default ``~/.cache/ugr-aot``) keyed on the kernel source,
the specialization, the arch and the Triton version, so a warm run only re-collects.
Must run WITHOUT ``TRITON_INTERPRET``. Parallelism: ``--jobs`` processes (default 2).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARCHS = (80, 89, 90)
DTYPES = ("float16", "bfloat16", "float32", "float64")
#: Kernels whose program reads one T-tile with no loop: fp64/B is meaningful.
TILE_KERNELS = {"fused_tile_kernel": "fwd", "fused_backward_kernel": "bwd",
                "stats_tile_kernel": "stats", "combine_kernel": "combine"}
_TORCH_TO_TRITON = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32",
                    "float64": "fp64", "int64": "i64", "int32": "i32", "bool": "i1",
                    "int8": "i8", "uint8": "u8"}
_FP64_OPS = re.compile(r"^(D[A-Z]+|MUFU\.[A-Z]+64H?)\b|\.F64\b")


# --------------------------------------------------------------------------------------
# 1. Collection: run the launch code on fake CUDA tensors and record every launch.
# --------------------------------------------------------------------------------------
def _arg_type(value):
    import torch
    if isinstance(value, torch.Tensor):
        return "*" + _TORCH_TO_TRITON[str(value.dtype).replace("torch.", "")]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    if value is None:
        return "constexpr"
    raise TypeError(f"cannot type a kernel argument {value!r}")


def _record(records, kernel, args, kwargs, input_bytes, origin):
    """Turn one launch into specialization dicts (one per autotune config)."""
    from triton.runtime.autotuner import Autotuner
    configs = [None]
    if isinstance(kernel, Autotuner):
        configs = kernel.configs
        kernel = kernel.fn
    names = kernel.arg_names
    params = kernel.params
    kw = dict(kwargs)
    num_warps = kw.pop("num_warps", 4)
    kw.pop("num_stages", None)
    for cfg in configs:
        cfg_kw = dict(kw)
        warps = num_warps
        if cfg is not None:
            cfg_kw.update(cfg.kwargs)
            warps = cfg.num_warps
        signature, constexprs, attrs = {}, {}, {}
        values = dict(zip(names, args))
        values.update(cfg_kw)
        for idx, (name, param) in enumerate(zip(names, params)):
            value = values[name]
            if param.is_constexpr:
                signature[name] = "constexpr"
                constexprs[name] = value
                continue
            kind = _arg_type(value)
            # Triton's runtime specialization: the integer 1 and None become constants,
            # pointers (torch allocations) and integers divisible by 16 get divisibility
            # hints, which decide the vector width of loads and stores.
            fixed = getattr(param, "do_not_specialize", False)
            if kind == "constexpr" or (kind in ("i32", "i64") and value == 1 and not fixed):
                signature[name] = "constexpr"
                constexprs[name] = value
            else:
                signature[name] = kind
                if kind.startswith("*") or (kind in ("i32", "i64") and value % 16 == 0
                                            and not fixed):
                    attrs[idx] = 16
        tile = constexprs.get("BLOCK_T")
        records.append(dict(
            kernel=kernel.fn.__name__, module=kernel.fn.__module__,
            signature=signature, constexprs={k: _jsonable(v) for k, v in constexprs.items()},
            attrs=attrs, num_warps=warps,
            input_bytes=input_bytes(tile) if (input_bytes and tile) else None,
            origin=origin))


def _jsonable(v):
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    return repr(v)


@contextlib.contextmanager
def _patched_launch(records, state):
    """Swap ``launch`` (and the CUDA-only bits of the launch code) for recorders."""
    import torch

    import ugr_kernels.backends.triton as tb
    import ugr_kernels.backends.triton.fused as tf

    saved = (tb.launch, tb._device_ctx, tf._device_ctx, torch.cuda.is_current_stream_capturing)

    def fake_launch(kernel, grid, *args, wrap=False, **kwargs):
        _record(records, kernel, args, kwargs, state.get("input_bytes"), state.get("origin"))

    tb.launch = fake_launch
    tb._device_ctx = tf._device_ctx = lambda device: contextlib.nullcontext()
    torch.cuda.is_current_stream_capturing = lambda: False
    try:
        yield
    finally:
        tb.launch, tb._device_ctx, tf._device_ctx, torch.cuda.is_current_stream_capturing = \
            saved


def collect(batch: int = 4, length: int = 32000, max_c_fused: int = 6,
            max_c_two_pass: int = 16, dtypes=DTYPES, two_pass_dtypes=DTYPES):
    """Every launch the Triton launch code requests over the request space."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import ugr_kernels.backends.triton as tb
    import ugr_kernels.backends.triton.fused as tf

    records: list = []
    state: dict = {}
    dev = "cuda"
    with _patched_launch(records, state), FakeTensorMode(allow_non_fake_inputs=True):
        for dname in dtypes:
            dtype = getattr(torch, dname)
            size = torch.empty((), dtype=dtype).element_size()
            # ---- fused forward and backward -------------------------------------------
            for c in range(1, max_c_fused + 1):
                est = torch.empty((batch, c, length), dtype=dtype, device=dev)
                ref = torch.empty((batch, c, length), dtype=dtype, device=dev)
                mix = torch.empty((batch, length), dtype=dtype, device=dev)
                alpha = torch.empty((), dtype=torch.float64, device=dev)
                for has_mix, by_source, pit, has_bias, has_mask, clamp, zero_mean in product(
                        (False, True), repeat=7):
                    items = (batch, c) if by_source else (batch,)
                    bias = torch.empty(items, dtype=torch.float64, device=dev) \
                        if has_bias else None
                    mask = torch.empty(items, dtype=torch.bool, device=dev) \
                        if has_mask else None
                    rows = 2 * c + int(has_mix)
                    state["input_bytes"] = lambda tile, rows=rows, size=size: tile * rows * size
                    state["origin"] = f"fused fwd {dname} C={c}"
                    out = tf.fused_forward(est, ref, mix if has_mix else None, alpha, bias,
                                           mask, by_source, pit, zero_mean, 1e-8,
                                           30.0 if clamp else None)
                    perm, coef = out[4], out[6]
                    state["input_bytes"] = lambda tile, c=c, size=size: tile * 2 * c * size
                    state["origin"] = f"fused bwd {dname} C={c}"
                    g = torch.empty((batch, c), dtype=out[1].dtype, device=dev)
                    gl = torch.empty((), dtype=out[0].dtype, device=dev)
                    for g1, g2 in product((None, g), repeat=2):
                        tf.backward(gl, g1, g2, est, ref, perm, coef)
            # ---- two-pass stats and combine ---------------------------------------------
            for c in range(1, max_c_two_pass + 1 if dname in two_pass_dtypes else 1):
                est = torch.empty((batch, c, length), dtype=dtype, device=dev)
                ref = torch.empty((batch, c, length), dtype=dtype, device=dev)
                mix = torch.empty((batch, 1, length), dtype=dtype, device=dev)
                f64 = dict(dtype=torch.float64, device=dev)
                for x, y in ((est, ref), (mix, ref), (ref, est), (ref, mix)):
                    cx, cy = x.shape[1], y.shape[1]
                    state["input_bytes"] = lambda tile, r=cx + cy, size=size: tile * r * size
                    state["origin"] = f"two-pass {dname} Cx={cx} Cy={cy}"
                    for zero_mean in (False, True):
                        tb.stats(x, y, zero_mean)
                    tb.combine(x, y, torch.empty((batch, cx), **f64),
                               torch.empty((batch, cy), **f64),
                               torch.empty((batch, cx, cy), **f64),
                               torch.empty((batch, cx), **f64))
    return records


def dedupe(records):
    """One entry per distinct (kernel, signature, constexprs, attrs, num_warps)."""
    specs: dict = {}
    for r in records:
        key = json.dumps([r["kernel"], r["signature"], r["constexprs"],
                          sorted(r["attrs"].items()), r["num_warps"]], sort_keys=True)
        if key not in specs:
            specs[key] = dict(r, origins=set())
        specs[key]["origins"].add(r["origin"])
    return list(specs.values())


# --------------------------------------------------------------------------------------
# 2. Compilation: triton.compile per arch, ptxas -v, cuobjdump -sass.
# --------------------------------------------------------------------------------------
def _bin(name):
    import triton
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _source_hash(spec):
    import importlib
    mod = importlib.import_module(spec["module"])
    fn = getattr(mod, spec["kernel"])
    import triton
    return hashlib.sha256((fn.src if hasattr(fn, "src") else "").encode()
                          + triton.__version__.encode()
                          + Path(mod.__file__).read_bytes()).hexdigest()[:16]


def _cache_dir():
    return Path(os.environ.get("UGR_AOT_CACHE", Path.home() / ".cache" / "ugr-aot"))


def compile_one(job):
    """Compile one (spec, arch); returns a result dict (never raises)."""
    spec, arch = job
    key = hashlib.sha256(json.dumps([_source_hash(spec), spec["kernel"], spec["signature"],
                                     spec["constexprs"], sorted(spec["attrs"].items()),
                                     spec["num_warps"], arch], sort_keys=True,
                                    default=str).encode()).hexdigest()
    cache = _cache_dir() / f"{key}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    result = dict(kernel=spec["kernel"], arch=arch, error=None)
    try:
        import importlib

        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
        attrs = {(int(i),): [["tt.divisibility", int(d)]] for i, d in spec["attrs"].items()}
        src = ASTSource(fn, spec["signature"], spec["constexprs"], attrs)
        t0 = time.time()
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options=dict(num_warps=spec["num_warps"]))
        result["compile_s"] = round(time.time() - t0, 2)
        result["shared"] = compiled.metadata.shared
        with tempfile.TemporaryDirectory() as tmp:
            ptx = Path(tmp) / "k.ptx"
            ptx.write_text(compiled.asm["ptx"])
            target = re.search(r"^\.target\s+(\S+)", compiled.asm["ptx"], re.M).group(1)
            out = subprocess.run([_bin("ptxas"), "-v", f"-arch={target}", str(ptx), "-o",
                                  str(Path(tmp) / "k.cubin")], capture_output=True,
                                 text=True, check=True).stderr
            cubin = Path(tmp) / "triton.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            sass = subprocess.run([_bin("cuobjdump"), "-sass", str(cubin)],
                                  capture_output=True, text=True, check=True).stdout
        m = re.search(r"Used (\d+) registers", out)
        result["regs"] = int(m.group(1)) if m else None
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill "
                      r"loads", out)
        result["stack"], result["spill_st"], result["spill_ld"] = (
            [int(g) for g in m.groups()] if m else (None, None, None))
        ops = re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)", sass,
                         re.M)
        result["sass"] = len(ops)
        result["fp64"] = sum(1 for op in ops if _FP64_OPS.search(op))
        by_op: dict = defaultdict(int)
        for op in ops:
            if _FP64_OPS.search(op):
                by_op[op.split(".")[0]] += 1
        result["fp64_by_op"] = dict(sorted(by_op.items()))
        # Backward branches: loops (their trip count is decided at run time).
        result["loops"] = sum(
            1 for at, to in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\s+"
                                       r"(?:\S+\s+)?0x([0-9a-f]+)", sass)
            if int(to, 16) < int(at, 16))
    except Exception as exc:   # a compile error is a result, reported and failed on
        result["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    if result["error"] is None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result))
    return result


# --------------------------------------------------------------------------------------
# 3. Report.
# --------------------------------------------------------------------------------------
def _spec_label(spec):
    c = spec["constexprs"]
    dt = next((v[1:] for k, v in spec["signature"].items() if k in ("est_ptr", "x_ptr")), "")
    keys = [k for k in ("C", "CX", "CY", "HAS_MIX", "BY_SOURCE", "PIT", "BLOCK_T") if k in c]
    return f"{dt} " + " ".join(f"{k}={c[k]}" for k in keys)


def run(args):
    records = collect(max_c_fused=args.max_c_fused, max_c_two_pass=args.max_c_two_pass,
                      dtypes=args.dtypes, two_pass_dtypes=args.two_pass_dtypes)
    specs = dedupe(records)
    if args.kernels:
        specs = [s for s in specs if s["kernel"] in args.kernels]
    two_pass = ("stats_tile_kernel", "stats_merge_kernel", "combine_kernel")
    jobs = [(dict(s, origins=sorted(s["origins"])), arch) for s in specs for arch in args.archs
            if s["kernel"] not in two_pass or arch in args.two_pass_archs]
    print(f"{len(records)} launches requested, {len(specs)} distinct specializations, "
          f"{len(jobs)} compiles", file=sys.stderr)
    t0 = time.time()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(compile_one, jobs, chunksize=4))
    print(f"compiled in {time.time() - t0:.0f} s", file=sys.stderr)
    rows = []
    for (spec, _arch), res in zip(jobs, results):
        row = dict(res, label=_spec_label(spec), num_warps=spec["num_warps"],
                   input_bytes=spec["input_bytes"], origins=spec["origins"],
                   constexprs=spec["constexprs"], signature=spec["signature"])
        if res.get("fp64") is not None and spec["input_bytes"] and \
                spec["kernel"] in TILE_KERNELS:
            row["fp64_per_byte"] = res["fp64"] * 32 * spec["num_warps"] / spec["input_bytes"]
        rows.append(row)
    return rows


def summarise(rows):
    """Per kernel and arch: spec count, register range, max spill, shared, fp64/B range."""
    groups: dict = defaultdict(list)
    for r in rows:
        groups[(r["kernel"], r["arch"])].append(r)
    lines = ["| kernel | arch | specs | registers | max spill B (st/ld) | shared B | "
             "fp64 SASS ops | fp64 lane-ops / input B |",
             "|---|---|---|---|---|---|---|---|"]
    for (kernel, arch), rs in sorted(groups.items()):
        ok = [r for r in rs if not r["error"]]
        err = len(rs) - len(ok)
        regs = [r["regs"] for r in ok]
        spill = max((max(r["spill_st"], r["spill_ld"]) for r in ok), default=0)
        worst = max(ok, key=lambda r: max(r["spill_st"], r["spill_ld"]), default=None)
        spill_s = f"{worst['spill_st']}/{worst['spill_ld']}" if spill else "0"
        fp64 = [r["fp64"] for r in ok]
        fpb = [r["fp64_per_byte"] for r in ok if "fp64_per_byte" in r]
        shared = max((r["shared"] for r in ok), default=0)
        lines.append(
            f"| {kernel} | sm_{arch} | {len(rs)}{f' ({err} errors)' if err else ''} | "
            f"{min(regs, default=0)}-{max(regs, default=0)} | {spill_s} | {shared} | "
            f"{min(fp64, default=0)}-{max(fp64, default=0)} | "
            + (f"{min(fpb):.2f}-{max(fpb):.2f}" if fpb else "-") + " |")
    return "\n".join(lines)


def detail(rows, arch=90):
    """Per specialization on one arch: the rows that spill or carry an fp64/B figure."""
    lines = ["| kernel | specialization | warps | regs | spill st/ld | fp64 ops | fp64/B |",
             "|---|---|---|---|---|---|---|"]
    seen = set()
    for r in sorted(rows, key=lambda r: (r["kernel"], r["label"])):
        if r["arch"] != arch or r["error"]:
            continue
        if not (r["spill_st"] or r["spill_ld"] or "fp64_per_byte" in r):
            continue
        key = (r["kernel"], r["label"], r["num_warps"], r["regs"], r["spill_st"], r["fp64"])
        if key in seen:
            continue
        seen.add(key)
        fpb = f"{r['fp64_per_byte']:.2f}" if "fp64_per_byte" in r else "-"
        lines.append(f"| {r['kernel']} | {r['label']} | {r['num_warps']} | {r['regs']} | "
                     f"{r['spill_st']}/{r['spill_ld']} | {r['fp64']} | {fpb} |")
    return "\n".join(lines)


def main(argv=None):
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        sys.exit("bench/aot_triton.py compiles for GPUs: run it without TRITON_INTERPRET")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archs", type=int, nargs="+", default=list(ARCHS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--kernels", nargs="*", help="only these kernel names")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    ap.add_argument("--two-pass-dtypes", nargs="+", default=list(DTYPES),
                    help="input dtypes collected for the two-pass kernels")
    ap.add_argument("--two-pass-archs", type=int, nargs="+", default=list(ARCHS),
                    help="archs the two-pass kernels are compiled for")
    ap.add_argument("--max-c-fused", type=int, default=6)
    ap.add_argument("--max-c-two-pass", type=int, default=16)
    ap.add_argument("--json", help="write every row here")
    ap.add_argument("--markdown", help="write the summary and sm_90 detail tables here")
    ap.add_argument("--budget", type=float, default=None,
                    help="fail where a fused tile/backward kernel at C <= 4 with 16/32-bit "
                         "inputs exceeds this many fp64 lane-ops per input byte")
    ap.add_argument("--no-fail", action="store_true", help="report only (BEFORE tables)")
    ap.add_argument("--max-spill-bytes", type=int, default=0,
                    help="tolerated spill bytes per specialization (default 0: any spill "
                         "fails); every spill is printed either way")
    args = ap.parse_args(argv)
    rows = run(args)
    summary = summarise(rows)
    print(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).write_text(summary + "\n\nsm_90, per specialization (spilling or "
                                       "tile kernels):\n\n" + detail(rows) + "\n")
    bad = [r for r in rows if r["error"]]
    spills = [r for r in rows if not r["error"] and (r["spill_st"] or r["spill_ld"])]
    over = []
    if args.budget is not None:
        over = [r for r in rows if r["kernel"] in ("fused_tile_kernel", "fused_backward_kernel")
                and r["constexprs"].get("C", 99) <= 4
                and not r["constexprs"].get("IN_F64", False)
                and r.get("fp64_per_byte", 0) > args.budget]
    for r in bad:
        print(f"ERROR {r['kernel']} sm_{r['arch']} {r['label']}: {r['error']}", file=sys.stderr)
    for r in spills:
        print(f"SPILL {r['kernel']} sm_{r['arch']} {r['label']} warps={r['num_warps']}: "
              f"{r['spill_st']}/{r['spill_ld']} B", file=sys.stderr)
    for r in over:
        print(f"FP64 {r['kernel']} sm_{r['arch']} {r['label']}: "
              f"{r['fp64_per_byte']:.2f} lane-ops/B > {args.budget}", file=sys.stderr)
    too_big = [r for r in spills if max(r["spill_st"], r["spill_ld"]) > args.max_spill_bytes]
    failed = bool(bad or too_big or over)
    print(f"{len(rows)} compiles: {len(bad)} errors, {len(spills)} spilling ({len(too_big)} "
          f"over {args.max_spill_bytes} B), {len(over)} over the fp64 budget", file=sys.stderr)
    return 1 if failed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
