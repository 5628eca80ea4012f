"""``WeightedSISDRLoss``: the ``nn.Module`` form of ``weighted_sisdr`` with a weighting scheme."""
from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from .api import WeightedSISDRResult, weighted_sisdr
from .pmf import _broadcast_to, weighting_terms
from .weighting import Robust, Uniform, Weighting


class WeightedSISDRLoss(nn.Module):
    """Negative PIT SI-SDR(i) with unified gradient reweighting.

    Example::

        criterion = WeightedSISDRLoss(Robust(alpha=0.1))
        loss = criterion(est, ref, mixture=mix, step=step)      # est, ref: (B, C, T)
        loss.backward()

        criterion = WeightedSISDRLoss(Curriculum(Linear(-0.2, 0.0, 20_000)))
        criterion = WeightedSISDRLoss(ClassBias({"speech": 3.0}, class_names=["speech", "env"]))
        result = criterion(est, ref, labels=labels, return_result=True)  # all per-item outputs
        loss, reordered = criterion(est, ref, return_est=True)   # as Asteroid's PITLossWrapper

    Args:
        weighting: a scheme from ``ugr_kernels.weighting``, a plain float alpha
            (``Robust(alpha)``) or None (``Uniform()``), as for ``ugr_kernels.reweight``.
        **options: forwarded to ``weighted_sisdr`` (``granularity``, ``pit``,
            ``zero_mean``, ``eps``, ``clamp_db``, ``backend``, ``process_group``, ...).
    """

    def __init__(self, weighting: Union[Weighting, float, None] = None, **options):
        super().__init__()
        if weighting is None:
            weighting = Uniform()
        elif isinstance(weighting, (int, float)) and not isinstance(weighting, bool):
            weighting = Robust(float(weighting))
        self.weighting = weighting
        self.options = options

    def forward(self, est: Tensor, ref: Tensor, mixture: Optional[Tensor] = None, *,
                step: int = 0, epoch: int = 0, labels: Optional[Tensor] = None,
                mask: Optional[Tensor] = None, return_result: bool = False,
                return_est: bool = False):
        """est, ref: (B, C, T); labels: class indices shaped like the items ((B, C) or (B,)).

        Returns the scalar loss; with ``return_est`` (as Asteroid's ``PITLossWrapper``)
        ``(loss, reordered_est)``, the estimates in the order of the references
        (``reordered_est[:, j]`` is the estimate PIT matched to ``ref[:, j]``); with
        ``return_result`` the full ``WeightedSISDRResult`` (both: ``(result, reordered)``).
        """
        if labels is not None and isinstance(est, Tensor) and est.dim() == 3:
            by_source = self.options.get("granularity", "source") == "source"
            items = est.shape[:2] if by_source else est.shape[:1]
            labels = _broadcast_to("labels", labels, items, est.device)
        terms = weighting_terms(self.weighting, step=step, epoch=epoch, labels=labels)
        result: WeightedSISDRResult = weighted_sisdr(
            est, ref, mixture=mixture, alpha=terms.alpha, bias=terms.bias, mask=mask,
            score_fn=terms.score_fn(), **self.options)
        out = result if return_result else result.loss
        if return_est:
            perm = result.perm.to(est.device)[..., None].expand_as(est)
            return out, est.gather(1, perm)
        return out

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"weighting={self.weighting!r}" + (f", {opts}" if opts else "")
