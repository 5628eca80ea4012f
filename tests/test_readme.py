"""README: the snippets of "Use ugr in your project" run, its claims hold, and the commands
shown for separate/evaluate use flags that exist."""
import re
from pathlib import Path

import pytest
import torch

import ugr_kernels as uk

README = Path(__file__).resolve().parents[1] / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section(title), flags=re.DOTALL)


SNIPPETS = blocks("Use ugr in your project", "python")


def test_the_section_has_its_four_snippets():
    assert len(SNIPPETS) == 4
    assert "PITLossWrapper" in SNIPPETS[1] and "return_est=True" in SNIPPETS[1]
    assert "class UGRSystem(System)" in SNIPPETS[2] and "reweight" in SNIPPETS[3]


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_on_its_own(index, capsys):
    if index == 2:   # the Asteroid System recipe: where asteroid is installed
        pytest.importorskip("asteroid.engine")
    torch.manual_seed(0)
    namespace = {"__name__": f"readme_snippet_{index}"}
    exec(compile(SNIPPETS[index], f"README.md snippet {index + 1}", "exec"), namespace)
    if index == 0:
        assert torch.isfinite(namespace["loss"])
    if index == 1:
        result, est = namespace["result"], namespace["est_sources"]
        assert result.sisdr.shape == (8, 2) and est.grad is not None
        # The reordered estimates are aligned: with the identity order they score the same.
        again = uk.weighted_sisdr(namespace["reordered"].detach(), namespace["targets"],
                                  pit=False)
        torch.testing.assert_close(again.sisdr, result.sisdr)
    if index == 1:
        torch.testing.assert_close(namespace["reordered"], namespace["est_sources"].gather(
            1, namespace["result"].perm[..., None].expand_as(namespace["est_sources"])))
    if index == 2:   # the override passes the mixture: the loss is -SI-SDRi, not -SI-SDR
        system, sources = namespace["system"], namespace["sources"]
        est = system(sources.sum(1))
        weighted = uk.WeightedSISDRLoss(uk.Robust(0.1))
        torch.testing.assert_close(namespace["loss"].detach(),
                                   weighted(est, sources, sources.sum(1)).detach())
        assert next(system.model.parameters()).grad is not None
    if index == 3:
        weights, y = namespace["favour_class_2"].weights, namespace["y"]
        assert weights[y == 2].sum() > (y == 2).float().mean()     # the bias favours class 2
        assert namespace["est"].grad is not None and namespace["net"].weight.grad is not None
    capsys.readouterr()


def pit_mean_neg_sisdr(est, ref):
    """What PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx") computes, from the
    definition: zero-mean SI-SDR for every (estimate, target) pair, the permutation with
    the least mean negative SI-SDR per example, the mean over the batch."""
    est = est - est.mean(-1, keepdim=True)
    ref = ref - ref.mean(-1, keepdim=True)
    dot = torch.einsum("bit,bjt->bij", est, ref)
    proj_energy = dot ** 2 / (ref ** 2).sum(-1)[:, None, :]
    noise_energy = (est ** 2).sum(-1)[:, :, None] - proj_energy
    neg = -10 * torch.log10(proj_energy / noise_energy)                  # (B, est i, ref j)
    perms = [(0, 1), (1, 0)]
    per_perm = torch.stack([neg[:, list(p), [0, 1]].mean(-1) for p in perms], 1)
    return per_perm.min(1).values.mean()


def test_uniform_loss_is_the_asteroid_style_pit_loss_value_and_sign():
    torch.manual_seed(1)
    ref = torch.randn(6, 2, 4000, dtype=torch.float64)
    est = ref.flip(1) + 0.5 * torch.randn(6, 2, 4000, dtype=torch.float64)
    ours = uk.WeightedSISDRLoss()(est, ref)
    torch.testing.assert_close(ours, pit_mean_neg_sisdr(est, ref), rtol=1e-9, atol=1e-9)
    assert ours < 0          # good estimates: negative loss, like pairwise_neg_sisdr


@pytest.mark.parametrize("module", ["separate", "evaluate"])
def test_commands_shown_use_existing_flags(module):
    import importlib

    text = "\n".join(blocks("After training: pictures, separating your recordings, "
                            "evaluating elsewhere", "bash"))
    lines = [line for line in text.splitlines() if f"python -m train.{module}" in line]
    assert lines
    parser_help = importlib.import_module(f"train.{module}").build_parser().format_help()
    for flag in re.findall(r"(--[a-z][a-z-]*)", "\n".join(lines)):
        assert flag in parser_help, flag


def test_premixed_commands_parse():
    """The README's pre-mixed commands (LibriMix manifest, wsj0-2mix folder) are accepted
    by the parsers of python -m train and python -m train.evaluate as written."""
    import shlex

    from train.commands.evaluate import build_parser as evaluate_parser
    from train.commands.train import parse_args

    block = next(b for b in blocks("Training", "bash") if "--train-manifest" in b)
    commands = [shlex.split(c) for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    trains = [c[3:] for c in commands if c[:3] == ["python", "-m", "train"]]
    evals = [c[3:] for c in commands if c[:3] == ["python", "-m", "train.evaluate"]]
    assert len(trains) == 2 and len(evals) == 2
    configs = [parse_args(argv) for argv in trains]
    assert configs[0].train_manifest and configs[0].test_manifest
    assert configs[1].wsj0_mix_dir
    for argv in evals:
        evaluate_parser().parse_args(argv)


def test_the_first_command_installs_what_makes_the_pictures():
    import tomllib

    first = blocks("Quickstart", "bash")[0]
    install = next(line for line in first.splitlines() if "pip install" in line)
    extras = re.findall(r'-e "?\.\[([a-z,]+)\]"?', install)
    assert extras, install
    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text())
    optional = pyproject["project"]["optional-dependencies"]
    wanted = [dep for extra in extras[0].split(",") for dep in optional[extra]]
    assert "matplotlib" in wanted + pyproject["project"]["dependencies"]
