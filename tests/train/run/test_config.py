"""RunConfig (train.run.config): the options, their file form, resolving for a machine."""
import dataclasses

import pytest
import torch

import ugr_kernels as uk
from train.run.config import INVOCATION_FIELDS, RunConfig


def test_the_file_form_leaves_out_how_a_run_was_invoked():
    config = RunConfig(resume=True, debug=True, steps=7, weighting=("robust", "class"),
                       gamma={"speech": 3.0})
    saved = config.to_file_dict()
    assert set(INVOCATION_FIELDS) == {"resume", "debug"}
    assert not set(INVOCATION_FIELDS) & set(saved) and "resolved" not in saved
    assert saved["steps"] == 7 and saved["weighting"] == ("robust", "class")
    assert set(saved) == set(RunConfig.option_names()) - set(INVOCATION_FIELDS)


def test_resolve_settles_machine_choices_once():
    cpu = torch.device("cpu")
    resolved = RunConfig(fused=True).resolve(cpu)
    assert resolved.resolved and resolved.model == "sudormrf-tiny"
    assert resolved.backend == uk.backends.resolve("auto", "cpu")
    assert isinstance(resolved.num_workers, int) and resolved.device == "cpu"
    again = resolved.resolve(cpu)
    assert dataclasses.asdict(again) == dataclasses.asdict(resolved)
    assert RunConfig().resolve(cpu).backend == "unfused"
    with pytest.raises(ValueError, match="--cuda-graphs needs --compile and a CUDA device"):
        RunConfig(cuda_graphs=True, compile=True).resolve(cpu)


def test_schedules_are_ugr_kernels_schedules():
    config = RunConfig(steps=400, epoch_steps=100, lr=1e-3, lr_decay_every=2,
                       lr_decay_factor=2.0, beta_start=-0.4, beta_end=0.0, beta_steps=100)
    lr = config.step_decay()
    assert [lr.at(0, e) for e in range(4)] == [1e-3, 1e-3, 5e-4, 5e-4]
    for kind in ("constant", "linear", "cosine", "exponential", "step"):
        beta = dataclasses.replace(config, beta_schedule=kind).beta_schedule_object()
        assert isinstance(beta, uk.Schedule)
        assert beta.at(0, 0) == pytest.approx(-0.4)
        assert beta.at(1000, 0) == pytest.approx(-0.4 if kind == "constant" else 0.0, abs=1e-3)


def test_class_weighting_names_unknown_classes():
    config = RunConfig(weighting=("class",), gamma={"speach": 3.0})
    with pytest.raises(ValueError, match=r"--gamma names unknown classes \['speach'\]"):
        config.weighting_scheme(["speech", "env"])
    scheme = RunConfig(weighting=("robust", "class"), alpha=0.2,
                       gamma={"speech": 1.0}).weighting_scheme(["speech", "env"])
    terms = scheme.terms(labels=torch.tensor([[0, 1]]))
    assert terms.alpha == pytest.approx(0.2) and terms.bias.tolist() == [[1.0, 0.0]]
