"""Static checks of the CUDA kernels without a GPU: find the CUDA tools, parse
``ptxas -v`` (registers, stack, spills) and count float64 instructions in the SASS
(``cuobjdump -sass``). Used by .ci/cuda_build.py and tests/test_cuda_static.py.

float64 instructions counted (an fp64 "lane-op" is one of these executed by one
thread): the D* arithmetic (DADD, DMUL, DFMA, DSETP, DSET, DMNMX, DMMA) and the
conversions and special functions that run on the fp64 pipe (F2F / F2I / I2F / FRND
with an F64 operand, MUFU.RCP64H / RSQ64H). A loop is a backward branch: every
instruction between the target and the branch is "in a loop"; an innermost loop
contains no other loop (the per-sample loops of the T-sized kernels are innermost).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cuda_home() -> Path | None:
    """The CUDA toolkit: $CUDA_HOME, the folder of `nvcc` on PATH, /usr/local/cuda, or the
    pip wheels (nvidia-cuda-nvcc: site-packages/nvidia/cu13); None when there is no nvcc."""
    cands = []
    if os.environ.get("CUDA_HOME"):
        cands.append(Path(os.environ["CUDA_HOME"]))
    cands.append(Path("/usr/local/cuda"))
    try:
        import nvidia  # noqa: PLC0415  (namespace package of the CUDA wheels)
        for p in nvidia.__path__:
            cands += sorted(Path(p).glob("cu1*"), reverse=True)
    except ImportError:
        pass
    for c in cands:
        if (c / "bin" / "nvcc").exists():
            return c
    nvcc = shutil.which("nvcc")
    if nvcc:
        return Path(nvcc).resolve().parent.parent
    return None


def nvcc() -> str | None:
    home = cuda_home()
    return str(home / "bin" / "nvcc") if home is not None else None


def cudart_dir() -> Path | None:
    home = cuda_home()
    if home is None:
        return None
    for d in ("lib64", "lib", "targets/x86_64-linux/lib"):
        if list((home / d).glob("libcudart.so*")):
            return home / d
    return None


def cuobjdump() -> str | None:
    """cuobjdump of the toolkit, else the one the Triton wheel ships."""
    home = cuda_home()
    if home is not None and (home / "bin" / "cuobjdump").exists():
        return str(home / "bin" / "cuobjdump")
    found = shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton  # noqa: PLC0415
        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    return None


def torch_includes() -> list[str]:
    from torch.utils.cpp_extension import include_paths  # noqa: PLC0415
    return [*include_paths(), sysconfig.get_paths()["include"]]


def demangle(names: list[str]) -> dict[str, str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return {n: n for n in names}
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> list[dict]:
    """One row per (kernel, arch) from `-Xptxas -v` output."""
    rows, cur = [], None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"kernel": m.group(1), "arch": m.group(2), "registers": None, "stack": 0,
                   "spill_stores": 0, "spill_loads": 0, "smem": 0}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = _STACK.search(line)
        if m:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
        m = _REGS.search(line)
        if m:
            cur["registers"] = int(m.group(1))
            m2 = _SMEM.search(line)
            if m2:
                cur["smem"] = int(m2.group(1))
    return rows


_FP64_ARITH = {"DADD", "DMUL", "DFMA", "DSETP", "DSET", "DMNMX", "DMMA"}
_FP64_CONV = {"F2F", "F2I", "I2F", "FRND"}
_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")
_FUNC = re.compile(r"Function\s*:\s*(\S+)")
_ARCH = re.compile(r"code for (sm_\d+a?)")
_BRA_ADDR = re.compile(r"0x([0-9a-f]+)")


def is_fp64(opcode: str) -> bool:
    parts = opcode.split(".")
    base = parts[0]
    if base in _FP64_ARITH:
        return True
    if base in _FP64_CONV:
        return "F64" in parts[1:]
    if base == "MUFU":
        return any(p.endswith("64H") for p in parts[1:])
    return False


def sass_fp64(obj: str | Path) -> list[dict]:
    """Per (kernel, arch): fp64 instructions in total and inside loops, from the SASS."""
    tool = cuobjdump()
    if tool is None:
        raise RuntimeError("no cuobjdump (CUDA toolkit or the triton wheel) found")
    text = subprocess.run([tool, "-sass", str(obj)], capture_output=True, text=True,
                          check=True).stdout
    out, arch, cur = [], None, None

    def finish():
        if cur is None:
            return
        insns = cur.pop("_insns")
        loops = []
        for addr, op, args in insns:
            if op.split(".")[0] in ("BRA", "JMP") and "0x" in args:
                tgt = int(_BRA_ADDR.search(args).group(1), 16)
                if tgt <= addr:
                    loops.append((tgt, addr))
        # Innermost loops: those that contain no other loop (the per-sample loops).
        inner = [(lo, hi) for lo, hi in loops
                 if not any((a, b) != (lo, hi) and lo <= a and b <= hi for a, b in loops)]
        total = in_loop = in_inner = 0
        ops: dict[str, int] = {}
        for addr, op, _ in insns:
            if is_fp64(op):
                total += 1
                ops[op] = ops.get(op, 0) + 1
                if any(lo <= addr <= hi for lo, hi in loops):
                    in_loop += 1
                if any(lo <= addr <= hi for lo, hi in inner):
                    in_inner += 1
        cur.update(fp64=total, fp64_in_loops=in_loop, fp64_in_inner_loops=in_inner,
                   fp64_ops=ops, instructions=len(insns), loops=len(loops))
        out.append(cur)

    for line in text.splitlines():
        m = _ARCH.search(line)
        if m:
            arch = m.group(1)
            continue
        m = _FUNC.search(line)
        if m:
            finish()
            cur = {"kernel": m.group(1), "arch": arch, "_insns": []}
            continue
        if cur is None:
            continue
        m = _INSN.search(line)
        if m:
            cur["_insns"].append((int(m.group(1), 16), m.group(2), m.group(3)))
    finish()
    return out
