"""Turn the outputs of ``bench/gpu_check.sh`` into a markdown report.

    python bench/gpu_report.py --out DIR [--report DIR/report.md]

Reads from DIR whatever exists (every part is optional, so a partial run still
gives a report): ``env.json`` (device and versions), ``steps.tsv`` (step, exit
code, seconds), ``tests.xml`` (pytest junit XML) and ``bench_gpu.json``
(pytest-benchmark JSON, or the stand-in's). Only the standard library is used.
"""
from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ET
from pathlib import Path


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def env_section(out: Path) -> list[str]:
    env = _load_json(out / "env.json") or {}
    lines = ["## Machine", ""]
    if not env:
        lines += ["(no env.json: the environment step did not run or failed)", ""]
    for key in ("device", "capability", "driver", "python", "torch", "torch_cuda", "triton",
                "nvcc", "torchmetrics", "fast_bss_eval", "asteroid", "pytest_benchmark"):
        if key in env:
            lines.append(f"- {key}: {env[key]}")
    smi = out / "nvidia-smi.txt"
    if smi.exists():
        lines += ["", "```", smi.read_text().strip()[:2000], "```"]
    return lines + [""]


def steps_section(out: Path) -> list[str]:
    path = out / "steps.tsv"
    lines = ["## Steps", ""]
    if not path.exists():
        return lines + ["(no steps recorded)", ""]
    lines += ["| step | exit code | seconds | log |", "|---|---|---|---|"]
    for row in path.read_text().splitlines():
        parts = row.split("\t")
        if len(parts) >= 3:
            name, code, secs = parts[:3]
            verdict = "ok" if code == "0" else ("TIMEOUT" if code in ("124", "137") else
                                                f"FAILED ({code})")
            lines.append(f"| {name} | {verdict} | {secs} | {name}.log |")
    return lines + [""]


def tests_section(out: Path) -> list[str]:
    lines = ["## Tests", ""]
    path = out / "tests.xml"
    if not path.exists():
        return lines + ["(no tests.xml: the test step did not run)", ""]
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return lines + [f"(tests.xml unreadable: {exc})", ""]
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: 0 for k in ("tests", "failures", "errors", "skipped")}
    seconds = 0.0
    for suite in suites:
        for key in total:
            total[key] += int(suite.get(key, 0) or 0)
        seconds += float(suite.get("time", 0) or 0)
    passed = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    lines.append(f"**{passed} passed, {total['failures']} failed, {total['errors']} errors, "
                 f"{total['skipped']} skipped** in {seconds:.1f} s")
    bad, skipped = [], {}
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        for tag in ("failure", "error"):
            node = case.find(tag)
            if node is not None:
                msg = (node.get("message") or node.text or "").strip().splitlines()
                bad.append(f"- {tag}: `{name}`: {msg[0][:300] if msg else ''}")
        node = case.find("skipped")
        if node is not None:
            reason = (node.get("message") or "").strip()[:200]
            skipped[reason] = skipped.get(reason, 0) + 1
    if bad:
        lines += ["", "Failures:", ""] + bad[:60]
    if skipped:
        lines += ["", "Skip reasons:", ""]
        lines += [f"- {count} x {reason}" for reason, count in sorted(skipped.items())]
    return lines + [""]


def _shape_key(info) -> str:
    shape = info.get("shape") or []
    return "x".join(str(s) for s in shape)


def bench_section(out: Path) -> list[str]:
    lines = ["## Benchmark: forward+backward", ""]
    data = _load_json(out / "bench_gpu.json")
    if not data or not data.get("benchmarks"):
        return lines + ["(no bench_gpu.json: the benchmark step did not run or failed)", ""]
    rows = []
    copy_gbps = {}
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") or {}
        stats = bench.get("stats") or {}
        mean = stats.get("mean")
        if mean is None or "backend" not in info:
            continue
        gbps = info.get("bytes", 0) / mean / 1e9 if mean else 0.0
        row = dict(backend=info["backend"], shape=_shape_key(info), dtype=info.get("dtype", "?"),
                   ms=mean * 1e3, gbps=gbps, what=info.get("what", ""),
                   stddev_ms=(stats.get("stddev") or 0.0) * 1e3)
        rows.append(row)
        if info["backend"] == "copy":
            copy_gbps[(row["shape"], row["dtype"])] = gbps
    lines += ["Bytes: forward reads est+ref, backward reads est+ref and writes d est "
              "(5 B*C*T elements); copy: reads and writes est+ref. % copy = GB/s of the row "
              "over the GB/s of the device-to-device copy at the same shape and dtype.", ""]

    def table(selected):
        out_lines = ["| backend | shape (B x C x T) | dtype | mean ms | std ms | GB/s | % copy |",
                     "|---|---|---|---|---|---|---|"]
        for r in selected:
            ref = copy_gbps.get((r["shape"], r["dtype"]))
            pct = f"{100.0 * r['gbps'] / ref:.0f}%" if ref and r["backend"] != "copy" else ""
            out_lines.append(f"| {r['backend']} | {r['shape']} | {r['dtype']} | {r['ms']:.3f} | "
                             f"{r['stddev_ms']:.3f} | {r['gbps']:.0f} | {pct} |")
        return out_lines

    def order(r):
        b, c, t = (int(v) for v in r["shape"].split("x")) if r["shape"] else (0, 0, 0)
        return (r["dtype"], b, c, t, r["backend"])

    main = sorted((r for r in rows if r["what"] != "weighting overhead"), key=order)
    weighting = sorted((r for r in rows if r["what"] == "weighting overhead"), key=order)
    lines += table(main) + [""]
    if weighting:
        lines += ["### Weighting overhead (alpha=0.1 with bias vs alpha=0, same backend)", ""]
        lines += table(weighting) + [""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the gpu_check.sh output folder")
    parser.add_argument("--report", type=Path, default=None, help="default: OUT/report.md")
    args = parser.parse_args(argv)
    report = args.report or args.out / "report.md"
    parts = ["# ugr GPU check", ""]
    for section in (env_section, steps_section, tests_section, bench_section):
        try:
            parts += section(args.out)
        except Exception as exc:  # a broken input must not hide the rest of the report
            parts += [f"({section.__name__} failed: {type(exc).__name__}: {exc})", ""]
    report.write_text("\n".join(parts) + "\n")
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
