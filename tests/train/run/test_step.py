"""The training step (train.run.step): no host sync, device-side skips, compiled without
recompiles, unfused loss."""
import functools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import ugr_kernels as uk
from train.commands.train import parse_args
from train.run.trainer import Trainer
from train.run.unfused import unfused_weighted_sisdr

QUICK = ["--model", "sudormrf-tiny", "--segment-seconds", "0.25", "--batch-size", "4",
         "--val-items", "4", "--test-items", "4", "--eval-batch-size", "4",
         "--no-progress", "--threads", "1", "--num-workers", "0"]

# Ops that make the host wait for a device value (.item(), bool(t), float(t), .tolist(),
# data-dependent shapes).
SYNC_OPS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default,
            torch.ops.aten.is_nonzero.default, torch.ops.aten.nonzero.default,
            torch.ops.aten.masked_select.default, torch.ops.aten.equal.default}


# .tolist() and .numpy() read CPU memory without dispatching an op: counted by wrapping.
HOST_READS = ("tolist", "numpy")


class CountSyncs(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []
        self._saved = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS:
            self.calls.append(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name in HOST_READS:
            real = self._saved[name] = getattr(torch.Tensor, name)

            def counted(t, *a, _real=real, _name=name, **k):
                self.calls.append(_name)
                return _real(t, *a, **k)
            setattr(torch.Tensor, name, counted)
        return super().__enter__()

    def __exit__(self, *exc):
        for name, real in self._saved.items():
            setattr(torch.Tensor, name, real)
        return super().__exit__(*exc)


def trainer(tmp_path, *extra):
    return Trainer(parse_args(QUICK + ["--run-dir", str(tmp_path / "run")] + list(extra)))


def batch(t, step):
    return t.data.train.batch(range(step * 4, step * 4 + 4))


@pytest.mark.parametrize("extra", [
    ["--fused", "--task", "mixed", "--weighting", "robust+class", "--gamma", "speech=2"],
    ["--weighting", "curriculum", "--beta-steps", "3"],                # unfused loss
    ["--fused", "--weighting", "temperature", "--clip-grad", "0"],
])
def test_a_non_logging_step_makes_no_host_sync(tmp_path, extra):
    t = trainer(tmp_path, *extra)
    t.train_step(batch(t, 0))          # the first step creates Adam's state
    t.step = 1
    with CountSyncs() as counter:
        t.train_step(batch(t, 1))
    assert counter.calls == []
    with CountSyncs() as counter:      # the logging step reads the window once
        record = t.metrics.read(t.dist)
    assert len(counter.calls) == 1 and record["finite_steps"] == 2


def _snapshot(t):
    params = [p.detach().clone() for p in t.model.parameters()]
    state = [{k: v.clone() for k, v in t.optimizer.state[p].items()} for p in t.model.parameters()]
    return params, state


def test_a_non_finite_step_leaves_parameters_and_adam_state_exactly_unchanged(tmp_path):
    t = trainer(tmp_path, "--fused", "--weighting", "robust")
    t.train_step(batch(t, 0))
    params, state = _snapshot(t)
    real = t.device_step.model
    t.device_step.model = lambda mix: real(mix) * float("nan")
    t.train_step(batch(t, 1))
    after_params, after_state = _snapshot(t)
    for a, b in zip(params, after_params):
        assert torch.equal(a, b)
    for a, b in zip(state, after_state):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert t.non_finite_steps == 1
    t.device_step.model = real    # and the next finite step updates again
    t.train_step(batch(t, 2))
    assert not torch.equal(params[0], next(t.model.parameters()))
    assert float(t.optimizer.state[next(t.model.parameters())]["step"]) == 2
    record = t.metrics.read(t.dist)
    assert record["non_finite_steps"] == 1 and record["finite_steps"] == 2


def test_a_non_finite_gradient_alone_skips_the_step(tmp_path):
    t = trainer(tmp_path, "--fused")
    t.train_step(batch(t, 0))
    params, _ = _snapshot(t)
    first = next(t.model.parameters())
    hook = first.register_hook(lambda g: g * float("inf"))
    t.train_step(batch(t, 1))
    hook.remove()
    assert t.non_finite_steps == 1
    assert all(torch.equal(a, b.detach()) for a, b in zip(params, t.model.parameters()))


def test_compiled_step_is_one_graph_and_a_changing_alpha_does_not_recompile(tmp_path, monkeypatch):
    from torch._dynamo.utils import counters

    # aot_eager traces exactly what inductor would (graph breaks, guards, the backward
    # graph) without spending minutes generating code on a small CPU.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    t = trainer(tmp_path, "--fused", "--compile", "--weighting", "curriculum",
                "--beta-start", "-0.3", "--beta-end", "0", "--beta-steps", "3")
    alphas = []
    for step in range(4):
        t.step = step
        alphas.append(t.weighting.terms(step=step, labels=torch.zeros(1, 2)).alpha)
        t.train_step(batch(t, step))
    assert len(set(alphas)) == 4
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert t.metrics.read(t.dist)["finite_steps"] == 4


def test_compiled_step_matches_eager(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    runs = []
    for name, flags in (("eager", []), ("compiled", ["--compile"])):
        t = trainer(tmp_path / name, "--fused", "--weighting", "robust", *flags)
        for step in range(2):
            t.step = step
            t.train_step(batch(t, step))
        runs.append([p.detach().clone() for p in t.model.parameters()])
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_default_loss_is_the_unfused_one_and_fused_resolves_to_ugr_kernels(tmp_path):
    assert parse_args(QUICK).resolve(torch.device("cpu")).backend == "unfused"
    fused = parse_args(QUICK + ["--fused"]).resolve(torch.device("cpu")).backend
    assert fused == uk.backends.resolve("auto", "cpu")
    assert parse_args(QUICK + ["--backend", "cpp"]).resolve(torch.device("cpu")).backend == "cpp"


@pytest.mark.parametrize("granularity", ["source", "example"])
def test_unfused_loss_matches_ugr_kernels(granularity):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 2, 800, generator=g)
    ref[3, 1] = 0.0                                        # a silent source is masked
    mix = ref.sum(1)
    est = (ref.flip(1) + 0.4 * torch.randn(5, 2, 800, generator=g)).requires_grad_(True)
    bias = torch.tensor([[0.0, 1.0]] * 5)
    if granularity == "example":
        bias = bias[:, 0]
    ours = unfused_weighted_sisdr(est, ref, mix, alpha=torch.tensor(0.2, dtype=torch.float64),
                                  bias=bias, granularity=granularity, clamp_db=40.0)
    (grad_ours,) = torch.autograd.grad(ours.loss, est)
    theirs = uk.weighted_sisdr(est, ref, mixture=mix, alpha=0.2, bias=bias,
                               granularity=granularity, clamp_db=40.0, backend="reference")
    (grad_theirs,) = torch.autograd.grad(theirs.loss, est)
    assert ours.loss.dtype == torch.float32               # computed in the input dtype
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.sisdri, theirs.sisdri, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.weights, theirs.weights, rtol=1e-4, atol=1e-5)
    assert torch.equal(ours.mask, theirs.mask) and not ours.mask[3, 1]
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-3, atol=1e-6)


def test_class_bias_keeps_its_table_on_the_device_and_checks_labels_only_when_asked():
    w = uk.ClassBias({"b": 2.0}, class_names=["a", "b"])
    labels = torch.tensor([[0, 1]])
    assert w.terms(labels=labels).bias.tolist() == [[0.0, 2.0]]
    assert w.table("cpu") is w.table("cpu")              # copied once, not per call
    with pytest.raises(ValueError, match="label 5 outside"):
        w.terms(labels=torch.tensor([[0, 5]]))
    quiet = uk.ClassBias({"b": 2.0}, class_names=["a", "b"], check_labels=False)
    with CountSyncs() as counter:
        quiet.terms(labels=labels)
    assert counter.calls == []
