"""torch.library custom ops wrapping the two passes of every backend.

``ugr::sufficient_stats`` is the forward pass, ``ugr::stats_backward`` the
backward pass. Both carry fake (meta) implementations so ``torch.compile``
traces around them without graph breaks; the autograd formula of
``sufficient_stats`` is the closed form

    d sxy_ij / d x_i = y_j - my_j,     d sxx_i / d x_i = 2 (x_i - mx_i)

(the derivative of the mean terms vanishes because centred sums are
stationary in the mean), so backward is one more pass over T that reads x
and y and writes dx. Means are returned for that pass and are not
differentiated.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .backends import get_backend


@torch.library.custom_op("ugr::sufficient_stats", mutates_args=())
def sufficient_stats(x: Tensor, y: Tensor, zero_mean: bool, backend: str
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(mx, my, sxy, sxx, syy) of x (B, Cx, T) against y (B, Cy, T); see ``backends``."""
    outs = get_backend(backend).stats(x.contiguous(), y.contiguous(), zero_mean)
    return tuple(o.contiguous() for o in outs)


@sufficient_stats.register_fake
def _(x, y, zero_mean, backend):
    b, cx, cy = x.shape[0], x.shape[1], y.shape[1]
    f64 = dict(dtype=torch.float64, device=x.device)
    return (x.new_empty((b, cx), **f64), x.new_empty((b, cy), **f64),
            x.new_empty((b, cx, cy), **f64), x.new_empty((b, cx), **f64),
            x.new_empty((b, cy), **f64))


@torch.library.custom_op("ugr::stats_backward", mutates_args=())
def stats_backward(x: Tensor, y: Tensor, mx: Tensor, my: Tensor, g: Tensor, h: Tensor,
                   backend: str) -> Tensor:
    """out_i = sum_j g_ij (y_j - my_j) + h_i (x_i - mx_i), shape and dtype of x."""
    return get_backend(backend).combine(x.contiguous(), y.contiguous(), mx.contiguous(),
                                        my.contiguous(), g.contiguous(), h.contiguous())


@stats_backward.register_fake
def _(x, y, mx, my, g, h, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    x, y, zero_mean, backend = inputs
    mx, my = output[0], output[1]
    ctx.save_for_backward(x, y, mx, my)
    ctx.backend = backend


def _backward(ctx, g_mx, g_my, g_sxy, g_sxx, g_syy):
    x, y, mx, my = ctx.saved_tensors
    dx = dy = None
    if ctx.needs_input_grad[0]:
        dx = stats_backward(x, y, mx, my, g_sxy, 2.0 * g_sxx, ctx.backend)
    if ctx.needs_input_grad[1]:
        dy = stats_backward(y, x, my, mx, g_sxy.transpose(1, 2), 2.0 * g_syy, ctx.backend)
    return dx, dy, None, None


sufficient_stats.register_autograd(_backward, setup_context=_setup_context)
