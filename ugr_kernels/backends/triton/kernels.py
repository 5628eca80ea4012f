"""Triton kernels of the two T-sized passes (launch code in ``__init__.py``).

Imported lazily by the backend, so ``TRITON_INTERPRET=1`` must be set before the
first call on CPU tensors (``tests/conftest.py`` does it).

Layout: x (B, CX, T), y (B, CY, T) contiguous. One program owns one (example,
T-tile) and all CX rows of x (a [CXP, BLOCK_T] tile, CXP = CX padded to a power of
two) and walks the CY rows of y one at a time, so the live tile stays 2-D and
small in registers whatever the source count.

Partials: ``part[b, f, tile]`` float64, field-major so the merge reads each field
of consecutive tiles contiguously. Fields: ``mean_x[CX] | mean_y[CY] | sxx[CX] |
syy[CY] | sxy[CX*CY]`` (row-major i, j), all centred on the tile's own means.

No ``from __future__ import annotations`` here: the interpreter recognises
``tl.constexpr`` parameters only from real (not stringified) annotations.
"""

import triton
import triton.language as tl


@triton.jit
def widen_f32(v):
    """fp16/bf16/fp32 -> fp32, exactly, for every value (subnormals, inf, NaN included).

    bf16 is the upper half of an fp32, so it widens by a 16-bit shift of its bits: the
    conversion a GPU does, written out because Triton's interpreter converts bf16
    subnormals wrongly (it renormalises them, then clamps the exponent to 0: a bf16
    denormal input read back 10x off and SI-SDR -10.6 dB instead of -1.08).
    """
    if v.dtype == tl.bfloat16:
        r = (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        r = v.to(tl.float32)
    return r


@triton.jit
def narrow_from_f32(v, DST: tl.constexpr):
    """fp32 -> DST (fp16/bf16/fp32), rounded to nearest even.

    For bf16 by integer arithmetic on the bits (add 0x7FFF plus the lowest kept bit,
    drop 16 bits; a NaN keeps its sign and becomes quiet): the GPU's cvt.rn.bf16.f32,
    written out because the interpreter truncates instead of rounding.
    """
    if DST == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        up = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        r = tl.where(v != v, (bits >> 16) | 0x40, up).to(tl.uint16).to(tl.bfloat16,
                                                                         bitcast=True)
    else:
        r = v.to(DST)
    return r


@triton.jit
def _to_acc(v, ACC_F64: tl.constexpr):
    if ACC_F64:
        if v.dtype == tl.float64:
            r = v
        else:
            r = widen_f32(v).to(tl.float64)
    else:
        r = widen_f32(v)
    return r


@triton.jit
def stats_tile_kernel(x_ptr, y_ptr, part_ptr, T, n_tiles,
                      CX: tl.constexpr, CY: tl.constexpr, CXP: tl.constexpr,
                      BLOCK_T: tl.constexpr, ACC_F64: tl.constexpr):
    """Per (example, tile): the tile means and centred sums, written to the partials."""
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    start = tile * BLOCK_T
    offs = start + tl.arange(0, BLOCK_T)
    tmask = offs < T
    n = tl.minimum(T - start, BLOCK_T)

    ix = tl.arange(0, CXP)
    rmask = ix < CX
    m2 = rmask[:, None] & tmask[None, :]
    x_rows = x_ptr + (b * CX + ix.to(tl.int64))[:, None] * T
    xv = _to_acc(tl.load(x_rows + offs[None, :], mask=m2, other=0.0), ACC_F64)
    nf = _to_acc(n, ACC_F64)
    # Corrected two-pass (Chan, Golub & LeVeque): centre on the rounded mean m,
    # then fold the residual mean d = sum(x - m) / n back in: exact to first order
    # even when a large DC offset makes m inexact in fp32.
    mean_x = tl.sum(xv, axis=1) / nf
    xc = tl.where(m2, xv - mean_x[:, None], 0.0)
    dx = tl.sum(xc, axis=1) / nf
    sxx = tl.sum(xc * xc, axis=1) - nf * dx * dx

    NF: tl.constexpr = 2 * CX + 2 * CY + CX * CY
    OFF_SXX: tl.constexpr = CX + CY
    OFF_SYY: tl.constexpr = 2 * CX + CY
    OFF_SXY: tl.constexpr = 2 * CX + 2 * CY
    pbase = part_ptr + b * NF * n_tiles + tile
    tl.store(pbase + ix * n_tiles, mean_x.to(tl.float64) + dx.to(tl.float64), mask=rmask)
    tl.store(pbase + (OFF_SXX + ix) * n_tiles, sxx.to(tl.float64), mask=rmask)

    for j in tl.static_range(CY):
        y_row = y_ptr + (b * CY + j) * T
        yv = _to_acc(tl.load(y_row + offs, mask=tmask, other=0.0), ACC_F64)
        mean_y = tl.sum(yv, axis=0) / nf
        yc = tl.where(tmask, yv - mean_y, 0.0)
        dy = tl.sum(yc, axis=0) / nf
        syy = tl.sum(yc * yc, axis=0) - nf * dy * dy
        sxy = tl.sum(xc * yc[None, :], axis=1) - nf * dx * dy    # column j of sxy
        tl.store(pbase + (CX + j) * n_tiles, mean_y.to(tl.float64) + dy.to(tl.float64))
        tl.store(pbase + (OFF_SYY + j) * n_tiles, syy.to(tl.float64))
        tl.store(pbase + (OFF_SXY + ix * CY + j) * n_tiles, sxy.to(tl.float64), mask=rmask)


@triton.jit
def stats_merge_kernel(part_ptr, mx_ptr, my_ptr, sxy_ptr, sxx_ptr, syy_ptr, T, n_tiles,
                       CX: tl.constexpr, CY: tl.constexpr, CXP: tl.constexpr,
                       CYP: tl.constexpr, BLOCK_T: tl.constexpr, CHUNK: tl.constexpr,
                       ZERO_MEAN: tl.constexpr, N_TILES_STATIC: tl.constexpr):
    """Per example: merge the tile partials in float64, in a fixed order.

    The k-way form of Chan et al.'s parallel update: with tile counts n_t, means
    m_t, m'_t and centred co-moments S_t, the global mean is M = sum n_t m_t / N and
    S = sum_t [S_t + n_t (m_t - M)(m'_t - M')]. Without centring (``ZERO_MEAN``
    False) M = 0, which yields the raw sums. Chunks of tiles are visited in order
    and each chunk is reduced by a fixed tree, so the result is bitwise repeatable.

    ``N_TILES_STATIC`` > 0 replaces the runtime loop bound by a constant: the
    interpreter needs it (it cannot take ``range`` over a scalar argument with
    NumPy >= 2.4, and it turns every plain assignment into a tensor, hence the
    inline conditional); compiled kernels get 0 and loop to the runtime ``n_tiles``.
    """
    b = tl.program_id(0).to(tl.int64)
    NF: tl.constexpr = 2 * CX + 2 * CY + CX * CY
    OFF_SXX: tl.constexpr = CX + CY
    OFF_SYY: tl.constexpr = 2 * CX + CY
    OFF_SXY: tl.constexpr = 2 * CX + 2 * CY
    base = part_ptr + b * NF * n_tiles
    ix = tl.arange(0, CXP)
    iy = tl.arange(0, CYP)
    xmask = ix < CX
    ymask = iy < CY
    k = tl.arange(0, CHUNK)

    big_mx = tl.zeros([CXP], dtype=tl.float64)
    big_my = tl.zeros([CYP], dtype=tl.float64)
    if ZERO_MEAN:
        total = tl.zeros([CHUNK], dtype=tl.float64)    # the count N, exact in float64
        for start in range(0, N_TILES_STATIC if N_TILES_STATIC > 0 else n_tiles, CHUNK):
            tiles = start + k
            tm = tiles < n_tiles
            nb = tl.where(tm, tl.minimum(T - tiles.to(tl.int64) * BLOCK_T, BLOCK_T), 0)
            nb = nb.to(tl.float64)
            mx_t = tl.load(base + ix[:, None] * n_tiles + tiles[None, :],
                           mask=xmask[:, None] & tm[None, :], other=0.0)
            my_t = tl.load(base + (CX + iy)[:, None] * n_tiles + tiles[None, :],
                           mask=ymask[:, None] & tm[None, :], other=0.0)
            big_mx += tl.sum(mx_t * nb[None, :], axis=1)
            big_my += tl.sum(my_t * nb[None, :], axis=1)
            total += nb
        count = tl.sum(total, axis=0)
        big_mx = big_mx / count
        big_my = big_my / count

    acc_xx = tl.zeros([CXP], dtype=tl.float64)
    acc_yy = tl.zeros([CYP], dtype=tl.float64)
    for start in range(0, N_TILES_STATIC if N_TILES_STATIC > 0 else n_tiles, CHUNK):
        tiles = start + k
        tm = tiles < n_tiles
        nb = tl.where(tm, tl.minimum(T - tiles.to(tl.int64) * BLOCK_T, BLOCK_T), 0)
        nb = nb.to(tl.float64)
        mx2 = xmask[:, None] & tm[None, :]
        my2 = ymask[:, None] & tm[None, :]
        mx_t = tl.load(base + ix[:, None] * n_tiles + tiles[None, :], mask=mx2, other=0.0)
        my_t = tl.load(base + (CX + iy)[:, None] * n_tiles + tiles[None, :], mask=my2,
                       other=0.0)
        sxx_t = tl.load(base + (OFF_SXX + ix)[:, None] * n_tiles + tiles[None, :], mask=mx2,
                        other=0.0)
        syy_t = tl.load(base + (OFF_SYY + iy)[:, None] * n_tiles + tiles[None, :], mask=my2,
                        other=0.0)
        dx = tl.where(mx2, mx_t - big_mx[:, None], 0.0)
        dy = tl.where(my2, my_t - big_my[:, None], 0.0)
        acc_xx += tl.sum(sxx_t + nb[None, :] * dx * dx, axis=1)
        acc_yy += tl.sum(syy_t + nb[None, :] * dy * dy, axis=1)
    tl.store(mx_ptr + b * CX + ix, big_mx, mask=xmask)
    tl.store(my_ptr + b * CY + iy, big_my, mask=ymask)
    tl.store(sxx_ptr + b * CX + ix, acc_xx, mask=xmask)
    tl.store(syy_ptr + b * CY + iy, acc_yy, mask=ymask)

    for j in tl.static_range(CY):
        big_myj = tl.sum(tl.where(iy == j, big_my, 0.0), axis=0)
        acc_xy = tl.zeros([CXP], dtype=tl.float64)
        for start in range(0, N_TILES_STATIC if N_TILES_STATIC > 0 else n_tiles, CHUNK):
            tiles = start + k
            tm = tiles < n_tiles
            nb = tl.where(tm, tl.minimum(T - tiles.to(tl.int64) * BLOCK_T, BLOCK_T), 0)
            nb = nb.to(tl.float64)
            mx2 = xmask[:, None] & tm[None, :]
            mx_t = tl.load(base + ix[:, None] * n_tiles + tiles[None, :], mask=mx2, other=0.0)
            myj_t = tl.load(base + (CX + j) * n_tiles + tiles, mask=tm, other=0.0)
            sxy_t = tl.load(base + (OFF_SXY + ix * CY + j)[:, None] * n_tiles + tiles[None, :],
                            mask=mx2, other=0.0)
            dx = tl.where(mx2, mx_t - big_mx[:, None], 0.0)
            dyj = tl.where(tm, myj_t - big_myj, 0.0)
            acc_xy += tl.sum(sxy_t + nb[None, :] * dx * dyj[None, :], axis=1)
        tl.store(sxy_ptr + (b * CX + ix) * CY + j, acc_xy, mask=xmask)


@triton.jit
def combine_kernel(x_ptr, y_ptr, mx_ptr, my_ptr, g_ptr, h_ptr, out_ptr, T,
                   CX: tl.constexpr, CY: tl.constexpr, CXP: tl.constexpr,
                   BLOCK_T: tl.constexpr, ACC_F64: tl.constexpr):
    """out_i = h_i (x_i - mx_i) + sum_j g_ij (y_j - my_j), elementwise in T (fp32 or fp64).

    Every output element is computed by the same expression whatever BLOCK_T and
    num_warps are, so autotuning this kernel cannot change a single bit.
    """
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    offs = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = offs < T
    ix = tl.arange(0, CXP)
    rmask = ix < CX
    m2 = rmask[:, None] & tmask[None, :]
    rows = (b * CX + ix.to(tl.int64))[:, None] * T + offs[None, :]
    xv = _to_acc(tl.load(x_ptr + rows, mask=m2, other=0.0), ACC_F64)
    # The float64 means as a hi + lo pair: x - mean stays accurate in fp32 when
    # the mean is a large DC offset that fp32 cannot hold exactly.
    mx64 = tl.load(mx_ptr + b * CX + ix, mask=rmask, other=0.0)
    mx_hi = _to_acc(mx64, ACC_F64)
    mx_lo = _to_acc(mx64 - mx_hi.to(tl.float64), ACC_F64)
    hv = _to_acc(tl.load(h_ptr + b * CX + ix, mask=rmask, other=0.0), ACC_F64)
    # A zero coefficient adds exactly 0, even against a NaN/inf row (a masked
    # item must not poison the gradient).
    acc = tl.where(hv[:, None] != 0, hv[:, None] * ((xv - mx_hi[:, None]) - mx_lo[:, None]), 0.0)
    for j in tl.static_range(CY):
        yv = _to_acc(tl.load(y_ptr + (b * CY + j) * T + offs, mask=tmask, other=0.0), ACC_F64)
        my64 = tl.load(my_ptr + b * CY + j)
        my_hi = _to_acc(my64, ACC_F64)
        my_lo = _to_acc(my64 - my_hi.to(tl.float64), ACC_F64)
        gj = _to_acc(tl.load(g_ptr + (b * CX + ix) * CY + j, mask=rmask, other=0.0), ACC_F64)
        acc += tl.where(gj[:, None] != 0, gj[:, None] * ((yv - my_hi) - my_lo)[None, :], 0.0)
    # 16-bit outputs go through fp32 (no direct fp64 -> bf16 conversion everywhere).
    if out_ptr.dtype.element_ty == tl.float64:
        res = acc.to(tl.float64)
    else:
        res = narrow_from_f32(acc.to(tl.float32), out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows, res, mask=m2)
