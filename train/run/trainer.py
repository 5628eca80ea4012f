"""The training run: setup, the loop around ``TrainStep``, evaluation, checkpoints.

The step itself lives in ``train.run.step`` (its metrics in ``train.run.metrics``),
distributed control in ``train.run.distributed``, the configuration in
``train.run.config``, the input pipeline in ``train.data.loader`` and the files in
``train.run_folder``. This module wires them together and does the host-side work of
a run: progress, logging once per ``--log-every``, validation, checkpoints, Ctrl-C
and the final test.
"""
from __future__ import annotations

import copy
import dataclasses
import signal
import sys
import time

import torch

from model import build_model, count_parameters

from ..data.loader import build_data, eval_batches, loader_rate, to_device, train_loader
from ..evaluation.plots import save_run_plots
from ..evaluation.scoring import evaluate
from ..evaluation.tables import format_table, summarize, write_test_results
from ..run_folder import RunFolder
from . import distributed as D
from .config import RunConfig
from .metrics import StepMetrics
from .plateau import ValidationControl
from .step import TrainStep


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; its checkpoint is saved (``--resume`` continues it)."""


class Trainer:
    """One training run (``python -m train``); ``train.commands.train`` lists the options.

    ``config`` is the configuration as given; ``self.config`` is it resolved for this
    machine (model, loss backend, workers, device), and ``config.json`` stores the former.
    """

    def __init__(self, config: RunConfig):
        self.given = config
        if config.threads:
            torch.set_num_threads(config.threads)
        wants_cuda = (config.device or "").startswith("cuda") or (
            config.device is None and torch.cuda.is_available())
        self.dist = D.init_from_env("cuda" if wants_cuda else "cpu")
        self.device = D.device_for(self.dist, config.device)
        if config.batch_size % self.dist.world_size:
            raise ValueError(f"--batch-size {config.batch_size} must be divisible by the "
                             f"{self.dist.world_size} ranks")
        self.config = config.resolve(self.device, self.dist.local_world_size)
        config = self.config
        self.main = self.dist.is_main
        self.folder = RunFolder(config.run_dir)
        self.show = self.main and not config.no_progress
        self.metrics_log = self.folder.metrics_log(enabled=self.main)

        self.data = build_data(config, self.show)
        # S comes from the data (or --num-sources); config.json records it.
        self.num_sources = self.data.num_sources
        self.given = dataclasses.replace(self.given, num_sources=self.num_sources)
        self.class_names = list(self.data.class_names)
        self.weighting = config.weighting_scheme(self.class_names)
        self.step_decay = config.step_decay()
        self.control = ValidationControl(config)   # best model, plateau lr, early stop
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, num_sources=self.num_sources).to(self.device)
        train_model = self.model
        if self.dist.enabled:
            train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.model.parameters() if p.requires_grad]
        # Fused Adam on CPU and CUDA alike: it takes the skip flag as found_inf.
        self.optimizer = torch.optim.Adam(params, lr=config.lr, fused=True)
        self.backend = config.backend
        # pmf diagnostics per logging window; weight shares per class for class schemes.
        self.metrics = StepMetrics(self.device, window=config.log_every,
                                   num_classes=len(self.class_names)
                                   if "class" in config.weighting else 0)
        self._ess_warned = False
        # The step on device tensors; ``train_step`` feeds it a batch and the schedules.
        self.device_step = TrainStep(train_model, params, self.optimizer, config, self.device,
                                     self.dist, self.metrics)
        self.step = 0
        self._interrupted = False
        self.throughput: dict = {}

    @property
    def best_val(self) -> float:
        """The best validation mean SI-SDRi so far (-inf before the first validation)."""
        return self.control.best

    def lr_at(self, step: int, epoch: int) -> float:
        """The learning rate of ``step``: the step decay's, or the plateau schedule's now."""
        if self.config.lr_schedule == "plateau":
            return self.control.lr
        return self.step_decay.at(step, epoch)

    @property
    def non_finite_steps(self) -> int:
        """Steps skipped for a non-finite output, loss or gradient (reads the device)."""
        return int(self.metrics.skipped)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "non_finite_steps": self.non_finite_steps,
                "best_val": self.best_val, "control": self.control.state_dict(),
                "args": self.config.to_dict(), "torch_rng": torch.get_rng_state()}

    def save(self) -> None:
        if self.main:
            self.folder.save_checkpoint(self.state())

    def restore(self) -> None:
        ckpt = self.folder.load_checkpoint()
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.metrics.skipped.fill_(int(ckpt["non_finite_steps"]))
        if "control" in ckpt:
            self.control.load_state_dict(ckpt["control"])
        else:  # a checkpoint from before best.pt and the plateau schedule
            self.control.best = float(ckpt["best_val"])
        torch.set_rng_state(ckpt["torch_rng"])

    # ------------------------------------------------------------------ logging
    def log(self, record: dict) -> None:
        self.metrics_log.write(record)

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        config = self.config
        if self.main:
            self.folder.create()
        D.barrier(self.dist)
        if config.resume:
            self.restore()
            self.metrics_log.truncate(self.step)
            if self.main:
                print(f"Resumed from {self.folder.checkpoint} at step {self.step}.")
        else:
            self.metrics_log.clear()
            if self.main:  # a best.pt of an earlier run in this folder is not this run's
                self.folder.best.unlink(missing_ok=True)
        if self.main:
            self._header()

        self._t0 = time.perf_counter()
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self._on_sigint)
        try:
            self._train()
        finally:
            signal.signal(signal.SIGINT, previous)
        if self._interrupted:
            self.save()
            D.barrier(self.dist)  # no rank leaves (and makes torchrun stop the rest) mid-save
            if self.main:
                print(f"\nInterrupted at step {self.step}: checkpoint saved to "
                      f"{self.folder.checkpoint}; continue with --resume.")
            D.shutdown(self.dist)
            raise RunInterrupted
        self.save()
        self._report_throughput()
        results = {}
        if not config.no_test:
            results = self.final_test()
        if self.main:  # pictures of the run, when matplotlib is installed
            save_run_plots(self.folder.path)
        D.shutdown(self.dist)
        return results

    def _header(self) -> None:
        config = self.config
        # Mixing alone, in this process: a loader with W workers makes about W times this.
        rate = loader_rate(self.data.train, max(1, config.batch_size // self.dist.world_size))
        self.throughput["loader_mixtures_per_s_per_process"] = round(rate, 1)
        self.throughput["num_workers"] = config.num_workers
        self.folder.write_config(self.given.to_file_dict())
        # What this machine made of the configuration: a fact of this session, not config.
        self.log({"kind": "setup", "step": self.step, "model": config.model,
                  "backend": self.backend, "device": str(self.device),
                  "world_size": self.dist.world_size, "num_workers": config.num_workers,
                  "parameters": count_parameters(self.model), "classes": self.class_names[:64],
                  "loader_mixtures_per_s_per_process": round(rate, 1)})
        print(f"model {config.model} ({count_parameters(self.model):,} parameters), "
              f"{self._data_name()}, {self.num_sources} sources, weighting "
              f"{self.weighting!r}, loss backend {self.backend}, device {self.device}, "
              f"{self.dist.world_size} process(es)"
              f"{', compiled' if config.compile else ''}")
        print(f"input: {config.num_workers} loader worker(s); mixing alone makes "
              f"{rate:.0f} mixtures/s per process")

    def _data_name(self) -> str:
        c = self.config
        if c.wsj0_mix_dir or c.train_manifest:
            return f"pre-mixed data {c.wsj0_mix_dir or c.train_manifest}"
        return f"task {c.task}"

    def _report_throughput(self) -> None:
        """Training mixtures/s against what the loader makes alone: which one bounds the run."""
        if not self.main or "train_mixtures_per_s" not in self.throughput:
            return
        t = self.throughput
        rate, workers = t["loader_mixtures_per_s_per_process"], t["num_workers"]
        used = t["train_mixtures_per_s"] / self.dist.world_size  # per rank
        if workers == 0:
            verdict = (f"mixing runs inside the training process and takes about "
                       f"{100 * used / rate:.0f}% of its time")
        else:
            busy = 100 * used / (rate * workers)
            verdict = (f"the {workers} worker(s) are about {busy:.0f}% busy: bound by "
                       f"{'the loader' if busy > 80 else 'the training step'}")
        print(f"throughput: training {t['train_steps_per_s']:.2f} steps/s = "
              f"{t['train_mixtures_per_s']:.1f} mixtures/s; the loader alone makes {rate:.0f} "
              f"mixtures/s per process; {verdict}")
        self.log({"kind": "throughput", "step": self.step, **t})

    def _on_sigint(self, signum, frame):
        if self._interrupted:  # second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._interrupted = True

    def _train(self):
        config = self.config
        loader = train_loader(self.data, config, self.step, self.dist.rank,
                              self.dist.world_size, pin=self.device.type == "cuda")
        bar = None
        if self.show:
            from tqdm import tqdm
            bar = tqdm(total=config.steps, initial=self.step, desc="train", unit="step",
                       dynamic_ncols=True)
        window_t0, window_steps, skipped = time.perf_counter(), 0, self.non_finite_steps
        run_t0, run_steps, aside, warm = window_t0, 0, 0.0, False
        self.model.train()
        if self.control.stopped:  # resumed after early stopping: nothing left to train
            loader = ()
        for batch in loader:
            self.train_step(batch)
            self.step += 1
            window_steps += 1
            run_steps += 1
            if not warm:  # the throughput leaves out the first step (compilation, warm-up)
                run_t0, run_steps, warm = time.perf_counter(), 0, True
            if bar is not None:
                bar.update(1)
            if self.step % config.log_every == 0 or self.step == config.steps:
                # The one host read of a logging interval (and, under torchrun, the
                # one place ranks agree on Ctrl-C).
                m = self.metrics.read(self.dist, self._interrupted)
                elapsed = max(time.perf_counter() - window_t0, 1e-9)
                epoch = config.epoch(self.step - 1)
                self.log({"kind": "train", "step": self.step, "loss": m["loss"],
                          "sisdri": m["sisdri"],
                          "examples_per_s": window_steps * config.batch_size / elapsed,
                          "lr": self.lr_at(self.step - 1, epoch),
                          "alpha": self.weighting.terms(step=self.step - 1, epoch=epoch,
                                                        labels=_NO_LABELS).alpha,
                          "non_finite_steps": m["non_finite_steps"],
                          **self._pmf_fields(m)})
                self._warn_low_ess(m, window_steps)
                if m["non_finite_steps"] > skipped and self.main:
                    print(f"step {self.step}: {m['non_finite_steps'] - skipped} step(s) of the "
                          f"last {window_steps} skipped for a non-finite output, loss or "
                          f"gradient ({m['non_finite_steps']} so far)", file=sys.stderr)
                skipped = m["non_finite_steps"]
                if bar is not None:
                    bar.set_postfix(loss=_fmt(m["loss"]), sisdri=_fmt(m["sisdri"]),
                                    ex_s=f"{window_steps * config.batch_size / elapsed:.1f}",
                                    skipped=skipped, ess=_fmt(m["pmf_ess"]))
                window_t0, window_steps = time.perf_counter(), 0
                if m["interrupted"]:  # some rank (or this process) got Ctrl-C
                    self._interrupted = True
                    break
            elif self._interrupted and not self.dist.enabled:
                break  # one process: nobody to agree with, stop right here
            t_aside = time.perf_counter()  # validation and saving are not training time
            if (config.eval_every and self.step % config.eval_every == 0
                    and self.step < config.steps):
                self.validate(bar)
            if self.control.stopped:
                if bar is not None:
                    bar.close()
                    bar = None
                if self.main:
                    print(f"early stop at step {self.step}: {self.control.since_best} "
                          f"validations without improvement on {self.best_val:.2f} dB "
                          f"(step {self.control.best_step})")
                break
            if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                self.save()
            aside += time.perf_counter() - t_aside
        if bar is not None:
            bar.close()
        elapsed = max(time.perf_counter() - run_t0 - aside, 1e-9)
        if run_steps:
            self.throughput.update(train_steps_per_s=round(run_steps / elapsed, 3),
                                   train_mixtures_per_s=round(run_steps * config.batch_size
                                                              / elapsed, 1))
        if not self._interrupted and self.step >= config.steps and not self.control.stopped:
            self.validate(None)

    def train_step(self, batch) -> None:
        """One optimizer step on ``batch`` (a collated dict); no host sync."""
        step = self.step
        epoch = self.config.epoch(step)
        mix, ref, labels = to_device(batch, self.device)
        terms = self.weighting.terms(step=step, epoch=epoch, labels=labels)
        self.device_step(mix, ref, terms.bias, terms.alpha, self.lr_at(step, epoch),
                         labels=labels)

    def _pmf_fields(self, m: dict) -> dict:
        """The window's pmf diagnostics as metrics.jsonl fields (shares by class name)."""
        out = {k: m[k] for k in ("pmf_ess", "pmf_ess_min", "pmf_ess_max", "pmf_max_weight")}
        shares = m.get("pmf_class_share")
        if "pmf_class_share" in m:
            out["pmf_class_share"] = None if shares is None else {
                name: share for name, share in zip(self.class_names, shares)}
        return out

    def _warn_low_ess(self, m: dict, window_steps: int) -> None:
        """Once per run: the pmf's ESS stayed below --ess-warn for a whole window."""
        low = self.config.ess_warn
        if self._ess_warned or not self.main or m["pmf_ess_max"] is None:
            return
        if m["pmf_ess_max"] < low:
            self._ess_warned = True
            print(f"warning: step {self.step}: the pmf's effective sample size stayed below "
                  f"{low:g} of the items for all {window_steps} step(s) of the window "
                  f"(max {m['pmf_ess_max']:.3f}, largest weight {m['pmf_max_weight']:.3f}): "
                  f"a few items carry the whole gradient, the effective batch has collapsed",
                  file=sys.stderr)

    def validate(self, bar) -> None:
        """Validate (rank 0), keep ``best.pt``, step the plateau lr and early stopping."""
        row = None
        if self.main:
            res = evaluate(self.model, eval_batches(self.data.val, self.config.eval_batch_size),
                           self.device)
            row = summarize(res["sisdri"])
        # Every rank takes the same decisions (lr, stop) from rank 0's value.
        mean = D.broadcast_float(row["mean"] if row is not None else 0.0, self.dist,
                                 self.device)
        improved = self.control.update(mean, self.step)
        if self.main:
            if improved:
                self.folder.save_best({"model": self.model.state_dict(), "step": self.step,
                                       "val_sisdri": mean, "args": self.config.to_dict()})
            self.log({"kind": "val", "step": self.step, **row, "best": improved,
                      "lr": self.control.lr if self.config.lr_schedule == "plateau"
                      else self.step_decay.at(self.step, self.config.epoch(self.step))})
            text = format_table({f"val @ {self.step}": row}, title="SI-SDRi (dB)")
            (bar.write if bar is not None else print)(text)
        D.barrier(self.dist)

    def final_test(self) -> dict:
        if not self.main:
            return {}
        progress = None
        if self.show:
            from tqdm import tqdm
            progress = tqdm(total=len(self.data.test), desc="test", unit="mix", leave=False)
        model, tested = self._model_to_test()
        res = evaluate(model, eval_batches(self.data.test, self.config.eval_batch_size),
                       self.device, progress=progress)
        if progress is not None:
            progress.close()
        info = {"step": self.step, "wall_seconds": round(time.perf_counter() - self._t0, 1),
                "non_finite_steps": self.non_finite_steps, **tested}
        out = write_test_results(self.folder, res, self.class_names, info=info)
        if self.non_finite_steps:
            print(f"{self.non_finite_steps} step(s) were skipped for a non-finite loss/gradient.")
        return out


    def _model_to_test(self) -> tuple[torch.nn.Module, dict]:
        """The model the final test scores (``--test-on``) and what results.json says of it."""
        info = {"best_val_sisdri": self.best_val if self.control.best_step is not None else None,
                "best_step": self.control.best_step, "early_stopped": self.control.stopped}
        if self.config.test_on == "best" and self.folder.best.exists():
            best = self.folder.load_best()
            model = copy.deepcopy(self.model)
            model.load_state_dict(best["model"])
            print(f"testing the best model: {self.folder.best} (step {best['step']}, "
                  f"validation {best['val_sisdri']:.2f} dB)")
            return model, {**info, "tested": "best", "tested_step": int(best["step"]),
                           "tested_checkpoint": str(self.folder.best)}
        if self.config.test_on == "best":
            print("no best.pt (no finite validation): testing the last model")
        return self.model, {**info, "tested": "last", "tested_step": self.step,
                            "tested_checkpoint": str(self.folder.checkpoint)}


_NO_LABELS = torch.zeros(1, 2, dtype=torch.long)  # the logged alpha does not depend on labels


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"
