"""The training loop: data, model, weighted loss, evaluation, checkpoints, DDP."""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

import ugr_kernels as uk
from model import build_model, count_parameters

from . import distributed as D
from .checkpoint import load_checkpoint, save_checkpoint
from .evaluate import evaluate, format_table, per_class, summarize
from .mixing import build_datasets, collate, datasets_from_catalogs

SAMPLE_RATE = 8000


class RankBatches(Sampler):
    """Step s of rank r reads indices ``s*B + r*b .. s*B + (r+1)*b - 1`` (B = global batch).

    Every step sees fresh mixtures, ranks see disjoint slices whose union is the
    single-process batch, and a resumed run continues with the same indices.
    """

    def __init__(self, global_batch: int, rank: int, world: int, start: int, stop: int):
        self.global_batch, self.local = global_batch, global_batch // world
        self.rank, self.start, self.stop = rank, start, stop

    def __iter__(self):
        for s in range(self.start, self.stop):
            base = s * self.global_batch + self.rank * self.local
            yield list(range(base, base + self.local))

    def __len__(self):
        return max(0, self.stop - self.start)


def build_weighting(args, class_names) -> uk.Weighting:
    total = None
    for name in args.weighting:
        if name == "uniform":
            w = uk.Uniform()
        elif name == "robust":
            w = uk.Robust(args.alpha)
        elif name == "curriculum":
            duration = args.beta_steps or max(1, args.steps // 2)
            if args.schedule_unit == "epoch" and args.beta_steps is None:
                duration = max(1, args.steps // args.epoch_steps // 2)
            kind = args.beta_schedule
            if kind == "constant":
                sched = uk.Constant(args.beta_start, unit=args.schedule_unit)
            elif kind == "linear":
                sched = uk.Linear(args.beta_start, args.beta_end, duration, unit=args.schedule_unit)
            elif kind == "cosine":
                sched = uk.Cosine(args.beta_start, args.beta_end, duration, unit=args.schedule_unit)
            elif kind == "exponential":
                sched = uk.Exponential(args.beta_start, args.beta_end, duration / 4,
                                       unit=args.schedule_unit)
            else:
                sched = uk.Step([args.beta_start, args.beta_end], [duration], unit=args.schedule_unit)
            w = uk.Curriculum(sched)
        elif name == "temperature":
            w = uk.Robust(uk.InverseTemperature(unit=args.schedule_unit))
        else:  # class
            unknown = [k for k in args.gamma if k not in class_names]
            if unknown:
                raise SystemExit(f"--gamma names unknown classes {unknown}; this task's classes "
                                 f"are {list(class_names)[:20]}")
            w = uk.ClassBias(args.gamma, class_names=list(class_names))
        total = w if total is None else total + w
    return total


def build_data(args, world: int, show: bool):
    segment = int(round(args.segment_seconds * SAMPLE_RATE))
    kw = dict(num_val=args.val_items, num_test=args.test_items, progress=show)
    if args.data_csv:
        from .datasets import csv_catalog

        key = "speech" if args.task == "speech" else "env"
        if args.task == "mixed":
            raise SystemExit("--data-csv provides one catalogue; --task mixed needs --data-dir")
        return datasets_from_catalogs(args.task, {key: csv_catalog(args.data_csv)}, segment,
                                      args.seed, **kw)
    if args.data_dir is None and show:
        print("No --data-dir given: training on the embedded synthetic sources. "
              "Select real audio with --data-dir (e.g. --data-dir ../shared/data).")
    return build_datasets(args.data_dir, args.task, segment, args.seed, **kw)


def learning_rate(args, step: int) -> float:
    if args.lr_decay_every <= 0:
        return args.lr
    epoch = step // args.epoch_steps
    return args.lr / args.lr_decay_factor ** (epoch // args.lr_decay_every)


class Trainer:
    """One training run (``python -m train``); see ``train.cli`` for the options."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        if args.threads:
            torch.set_num_threads(args.threads)
        requested = args.device
        self.dist = D.init_from_env("cuda" if (requested or "").startswith("cuda") or
                                    (requested is None and torch.cuda.is_available()) else "cpu")
        self.device = D.device_for(self.dist, requested)
        if args.batch_size % self.dist.world_size:
            raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the "
                             f"{self.dist.world_size} ranks")
        self.main = self.dist.is_main
        self.run_dir = Path(args.run_dir)
        self.show = self.main and not args.no_progress

        if args.model == "auto":
            args.model = "sudormrf-0.25x" if self.device.type == "cuda" else "sudormrf-tiny"
        self.data = build_data(args, self.dist.world_size, self.show)
        self.class_names = list(self.data.class_names)
        torch.manual_seed(args.seed)
        self.model = build_model(args.model, num_sources=2).to(self.device)
        self.train_model = self.model
        if self.dist.enabled:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # Static shapes: every training batch has the same (B, T); dynamic shapes hit an
        # inductor bug on SuDoRM-RF with torch 2.13 (a sympy Mod it cannot print).
        self.forward = (torch.compile(self.train_model, dynamic=False) if args.compile
                        else self.train_model)
        fused_adam = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(
            [p for p in self.model.parameters() if p.requires_grad], lr=args.lr,
            **({"fused": True} if fused_adam else {}))
        backend = args.backend or ("auto" if args.fused else "reference")
        self.criterion = uk.WeightedSISDRLoss(
            build_weighting(args, self.class_names), granularity=args.granularity,
            clamp_db=args.clamp_db, backend=backend, process_group=self.dist.group,
            check_finite=False)
        self.backend = backend
        self.step = 0
        self.non_finite_steps = 0
        self.best_val = -math.inf
        self._interrupted = False

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "non_finite_steps": self.non_finite_steps,
                "best_val": self.best_val, "args": vars(self.args),
                "torch_rng": torch.get_rng_state()}

    def save(self) -> None:
        if self.main:
            save_checkpoint(self.state(), self.run_dir / "checkpoint.pt")

    def restore(self) -> None:
        ckpt = load_checkpoint(self.run_dir / "checkpoint.pt")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.non_finite_steps = int(ckpt["non_finite_steps"])
        self.best_val = float(ckpt["best_val"])
        torch.set_rng_state(ckpt["torch_rng"])

    # ------------------------------------------------------------------ logging
    def log(self, record: dict) -> None:
        if not self.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        args = self.args
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        D.barrier(self.dist)
        if args.resume:
            self.restore()
            if self.main:
                print(f"Resumed from {self.run_dir / 'checkpoint.pt'} at step {self.step}.")
        elif self.main:
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if self.main:
            cfg = dict(vars(args), world_size=self.dist.world_size, device=str(self.device),
                       backend_resolved=self.backend, parameters=count_parameters(self.model),
                       classes=self.class_names[:64])
            (self.run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
            print(f"model {args.model} ({count_parameters(self.model):,} parameters), task "
                  f"{args.task}, weighting {self.criterion.weighting!r}, loss backend "
                  f"{self.backend}, device {self.device}, {self.dist.world_size} process(es)")

        self._t0 = time.perf_counter()
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._train()
        finally:
            signal.signal(signal.SIGINT, previous)
        if self._interrupted:
            self.save()
            if self.main:
                print(f"\nInterrupted at step {self.step}: checkpoint saved to "
                      f"{self.run_dir / 'checkpoint.pt'}; continue with --resume.")
            D.shutdown(self.dist)
            sys.exit(130)
        self.save()
        results = {}
        if not args.no_test:
            results = self.final_test()
        if self.main:  # pictures of the run, when matplotlib is installed
            from .plots import save_run_plots
            save_run_plots(self.run_dir)
        D.shutdown(self.dist)
        return results

    def _on_sigint(self, signum, frame):
        if self._interrupted:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._interrupted = True

    def _loader(self, dataset, sampler, workers):
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                          num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def _train(self):
        args = self.args
        sampler = RankBatches(args.batch_size, self.dist.rank, self.dist.world_size,
                              self.step, args.steps)
        loader = self._loader(self.data.train, sampler, args.num_workers)
        bar = None
        if self.show:
            from tqdm import tqdm
            bar = tqdm(total=args.steps, initial=self.step, desc="train", unit="step",
                       dynamic_ncols=True)
        window = {"loss": [], "sisdri": [], "examples": 0, "t0": time.perf_counter()}
        self.model.train()
        for batch in loader:
            stop = D.broadcast_flag(self._interrupted, self.dist)
            if stop:
                self._interrupted = True
                break
            loss, sisdri = self.train_step(batch)
            self.step += 1
            window["examples"] += args.batch_size
            if loss is not None:
                window["loss"].append(loss)
                window["sisdri"].append(sisdri)
            if bar is not None:
                rate = window["examples"] / max(time.perf_counter() - window["t0"], 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.2f}" if loss is not None else "skip",
                                sisdri=f"{sisdri:.2f}" if sisdri is not None else "-",
                                ex_s=f"{rate:.1f}", skipped=self.non_finite_steps)
            if self.step % args.log_every == 0 or self.step == args.steps:
                elapsed = max(time.perf_counter() - window["t0"], 1e-9)
                self.log({"kind": "train", "step": self.step,
                          "loss": _mean(window["loss"]), "sisdri": _mean(window["sisdri"]),
                          "examples_per_s": window["examples"] / elapsed,
                          "lr": learning_rate(args, self.step - 1),
                          "alpha": self.criterion.weighting.terms(
                              step=self.step - 1, epoch=(self.step - 1) // args.epoch_steps,
                              labels=torch.zeros(1, 2, dtype=torch.long)).alpha,
                          "non_finite_steps": self.non_finite_steps})
                window = {"loss": [], "sisdri": [], "examples": 0, "t0": time.perf_counter()}
            if args.eval_every and self.step % args.eval_every == 0 and self.step < args.steps:
                self.validate(bar)
            if args.checkpoint_every and self.step % args.checkpoint_every == 0:
                self.save()
        if bar is not None:
            bar.close()
        if not self._interrupted and self.step >= args.steps:
            self.validate(None)

    def train_step(self, batch):
        args = self.args
        step = self.step
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(args, step)
        mix = batch["mixture"].to(self.device, non_blocking=True)
        ref = batch["sources"].to(self.device, non_blocking=True)
        labels = batch["labels"].to(self.device, non_blocking=True)
        amp = args.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=amp):
            est = self.forward(mix)
        # A diverged model is caught here, not by the loss's input check. Every decision
        # is agreed across ranks first, so no rank enters a collective the others skip.
        bad = D.broadcast_flag(not bool(torch.isfinite(est).all()), self.dist)
        if not bad:
            result = self.criterion(est.float(), ref, mix, step=step,
                                    epoch=step // args.epoch_steps, labels=labels,
                                    return_result=True)
            bad = D.broadcast_flag(not bool(torch.isfinite(result.loss)), self.dist)
        if not bad:
            self.optimizer.zero_grad(set_to_none=True)
            result.loss.backward()
            if args.clip_grad > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.clip_grad)
                bad = D.broadcast_flag(not bool(torch.isfinite(norm)), self.dist)
        if not bad:
            self.optimizer.step()
            valid = result.mask
            sisdri = float(result.sisdri.detach()[valid].mean()) if valid.any() else float("nan")
            return float(result.loss.detach()) / self.dist.world_size, sisdri
        self.non_finite_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.main:
            msg = (f"step {step}: non-finite loss or gradient, step skipped "
                   f"({self.non_finite_steps} so far)")
            print(msg, file=sys.stderr)
        return None, None

    def _eval_batches(self, dataset):
        b = self.args.eval_batch_size
        n = len(dataset)
        for start in range(0, n, b):
            yield dataset.batch(range(start, min(n, start + b)))

    def validate(self, bar) -> Optional[dict]:
        if self.main:
            res = evaluate(self.model, self._eval_batches(self.data.val), self.device,
                           backend=self._eval_backend())
            row = summarize(res["sisdri"])
            self.log({"kind": "val", "step": self.step, **row})
            text = format_table({f"val @ {self.step}": row}, title="SI-SDRi (dB)")
            (bar.write if bar is not None else print)(text)
            if row["mean"] > self.best_val:
                self.best_val = row["mean"]
        D.barrier(self.dist)

    def _eval_backend(self):
        return "auto"

    def final_test(self) -> dict:
        if not self.main:
            return {}
        progress = None
        if self.show:
            from tqdm import tqdm
            progress = tqdm(total=len(self.data.test), desc="test", unit="mix", leave=False)
        res = evaluate(self.model, self._eval_batches(self.data.test), self.device,
                       backend=self._eval_backend(), progress=progress)
        if progress is not None:
            progress.close()
        from .results import write_results

        info = {"step": self.step, "wall_seconds": round(time.perf_counter() - self._t0, 1),
                "non_finite_steps": self.non_finite_steps}
        out = write_results(self.run_dir, res, self.class_names, info=info)
        if self.non_finite_steps:
            print(f"{self.non_finite_steps} step(s) were skipped for a non-finite loss/gradient.")
        return out


def _mean(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.mean(xs)) if xs else None
