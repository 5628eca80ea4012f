"""Compile and link the extension's CUDA build on a machine without a GPU (CI).

    python .ci/cuda_build.py [--arch 80 --arch 90] [--out build/cuda_ci]

1. Every csrc/cuda/*.cu is compiled with nvcc for each arch (default sm_80 and sm_90)
   with the flags torch's BuildExtension would use (COMMON_NVCC_FLAGS, -fPIC, -std=c++20,
   -DTORCH_API_INCLUDE_EXTENSION_H, -DTORCH_EXTENSION_NAME=_C) plus setup.py's
   nvcc_flags() (-DUGR_WITH_CUDA ...) and `-Xptxas -v`, against the installed torch's
   headers. A CPU-only torch has no generated c10/cuda/impl/cuda_cmake_macros.h, so
   -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE is added then.
2. The C++ sources are compiled with the host compiler and -DUGR_WITH_CUDA (setup.py's
   cxx_flags()), as in a CUDA build.
3. Everything is linked into one shared library (`-shared`) against libc10, libtorch,
   libtorch_cpu, libtorch_python and libcudart (the toolkit's, or the nvidia-cuda-runtime
   wheel's). Duplicate definitions fail here.
4. Link check: every undefined dynamic symbol of that library must be defined by one of
   its needed libraries, or be one that a CUDA build of torch or the Python interpreter
   provides at load time: c10::cuda::* (libc10_cuda), at::cuda::* (libtorch_cuda) and the
   Python C API (Py*, _Py*). Anything else is a link error that a GPU machine would hit
   at `import ugr_kernels._C`.
5. Fails on any spill (`bytes spill stores/loads` non-zero) of any kernel.

Writes OUT/ptxas.json (registers, stack, spills per kernel and arch) and
OUT/sass_fp64.json (static fp64 instruction counts per kernel, cuobjdump -sass).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "cuda_emulation"))
import cuda_tools  # noqa: E402


def _setup_module():
    spec = importlib.util.spec_from_file_location("ugr_setup", ROOT / "setup.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() runs only as __main__
    return mod


def _run(cmd: list[str], what: str) -> str:
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    print(f"  {what}: {time.time() - t0:.0f}s, exit {r.returncode}", flush=True)
    if r.returncode != 0:
        sys.stderr.write(" ".join(cmd) + "\n" + r.stdout[-4000:] + r.stderr[-8000:])
        raise SystemExit(f"cuda_build: {what} failed")
    return r.stdout + r.stderr


def _defined(lib: str) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True,
                         text=True).stdout
    return {ln.split()[-1].split("@")[0] for ln in out.splitlines() if ln.strip()}


_ALLOWED = re.compile(r"^(c10::cuda::|at::cuda::|Py|_Py)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", action="append", default=None, help="SM number, e.g. 90")
    ap.add_argument("--out", default=str(ROOT / "build" / "cuda_ci"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()
    archs = args.arch or ["80", "90"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    nvcc = cuda_tools.nvcc()
    cudart = cuda_tools.cudart_dir()
    if nvcc is None or cudart is None:
        raise SystemExit("cuda_build: no nvcc / libcudart found (install nvidia-cuda-nvcc)")
    print("nvcc:", nvcc, "| cudart:", cudart, flush=True)
    print(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
          .strip().splitlines()[-1], flush=True)

    import torch  # noqa: PLC0415
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, library_paths  # noqa: PLC0415

    setup_mod = _setup_module()
    cpp_sources, cu_sources = setup_mod.sources()
    incs = [f"-I{p}" for p in [str(ROOT / "csrc"), *cuda_tools.torch_includes()]]
    defs = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    torch_inc = Path(cuda_tools.torch_includes()[0])
    if not (torch_inc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        defs.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")   # CPU-only torch headers
    gencode = []
    for a in archs:
        gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]

    jobs = []
    for src in cu_sources:
        obj = out / (Path(src).stem + ".cu.o")
        cmd = [nvcc, "-c", src, "-o", str(obj), *COMMON_NVCC_FLAGS, "-Xcompiler", "-fPIC",
               "-std=c++20", *setup_mod.nvcc_flags(), *defs, *incs, *gencode,
               "-Xptxas", "-v"]
        jobs.append((obj, cmd, f"nvcc {src} (sm_{', sm_'.join(archs)})"))
    cxx = os.environ.get("CXX", "g++")
    for src in cpp_sources:
        obj = out / (Path(src).stem + ".o")
        cmd = [cxx, "-c", src, "-o", str(obj), "-fPIC", "-std=c++20",
               *setup_mod.cxx_flags(), "-DUGR_WITH_CUDA", *defs, *incs]
        jobs.append((obj, cmd, f"{cxx} {src}"))

    logs = {}
    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = {pool.submit(_run, cmd, what): (obj, what) for obj, cmd, what in jobs}
        for f in cf.as_completed(futs):
            logs[futs[f][1]] = f.result()

    # Registers and spills.
    rows = []
    for what, text in logs.items():
        if what.startswith("nvcc"):
            rows += cuda_tools.parse_ptxas(text)
    names = cuda_tools.demangle(sorted({r["kernel"] for r in rows}))
    for r in rows:
        r["name"] = names[r["kernel"]]
    (out / "ptxas.json").write_text(json.dumps(rows, indent=1))
    sass = []
    if cuda_tools.cuobjdump() is not None:
        for obj, _, what in jobs:
            if what.startswith("nvcc"):
                sass += cuda_tools.sass_fp64(obj)
        (out / "sass_fp64.json").write_text(json.dumps(sass, indent=1))
    spills = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    width = max(len(r["name"]) for r in rows)
    print(f"{'kernel':<{width}}  arch    regs  stack  spill st/ld")
    for r in sorted(rows, key=lambda r: (r["name"], r["arch"])):
        print(f"{r['name']:<{width}}  {r['arch']:<6} {r['registers']:>5} {r['stack']:>6}"
              f"  {r['spill_stores']}/{r['spill_loads']}")
    print(f"{len(rows)} kernel builds, {len(spills)} with spills", flush=True)

    # Link into one shared library, as setup.py would (plus cudart).
    so = out / "_C_cuda_link_check.so"
    tlib = library_paths()[0]
    _run([cxx, "-shared", "-o", str(so), *[str(o) for o, _, _ in jobs], f"-L{tlib}",
          "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python", f"-L{cudart}",
          "-l:" + sorted(p.name for p in cudart.glob("libcudart.so*"))[0], "-fopenmp",
          f"-Wl,-rpath,{tlib}", f"-Wl,-rpath,{cudart}"], "link")

    # Link check: undefined symbols must come from the needed libraries or the allow-list.
    env = dict(os.environ, LD_LIBRARY_PATH=f"{tlib}:{cudart}")
    ldd = subprocess.run(["ldd", str(so)], capture_output=True, text=True, env=env).stdout
    libs = re.findall(r"=>\s*(\S+)\s+\(", ldd) + re.findall(r"^\s*(/\S+)\s+\(", ldd, re.M)
    missing_libs = re.findall(r"(\S+)\s+=>\s+not found", ldd)
    if missing_libs:
        raise SystemExit(f"cuda_build: needed libraries not found: {missing_libs}")
    defined = set()
    for lib in libs:
        defined |= _defined(lib)
    undef = subprocess.run(["nm", "-D", "--undefined-only", str(so)], capture_output=True,
                           text=True).stdout
    # Strong undefined symbols only ("U"); weak ones ("w": _ITM_*, __gmon_start__, TLS
    # init functions) may stay unresolved by design.
    names = sorted({ln.split()[-1].split("@")[0] for ln in undef.splitlines()
                    if ln.split() and ln.split()[0] == "U"} - defined)
    dem = cuda_tools.demangle(names)
    allowed = [n for n in names if _ALLOWED.match(dem[n])]
    bad = [dem[n] for n in names if not _ALLOWED.match(dem[n])]
    print(f"link check: {len(names)} symbols left for load time "
          f"({len(allowed)} c10::cuda / at::cuda / Python C API)", flush=True)
    for n in allowed:
        if not dem[n].startswith(("Py", "_Py")):
            print("   ", dem[n])
    if bad:
        raise SystemExit("cuda_build: unresolved symbols:\n  " + "\n  ".join(bad))
    print(f"library {so.name}: {so.stat().st_size // 1024} KiB")

    if spills:
        raise SystemExit("cuda_build: kernels spill registers:\n  " + "\n  ".join(
            f"{r['name']} {r['arch']}: {r['spill_stores']}/{r['spill_loads']} B"
            for r in spills))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
