"""Projections whose matmuls, forward and backward, are all in the form XLA:CPU's fast matmul library takes.

`linear(x, w, n_in)` contracts the last `n_in` dims of x with the first `n_in` dims of w (x @ W for a weight
stored input-major), accumulating in float32. Its value is the plain einsum's; only the backward differs in form.

Why: XLA:CPU (jax 0.10) sends a matmul to its fast library (YNNPACK; in bf16 its `avx512_bf16` kernels) only when
the left operand contracts its last dim and has a row-major layout, and only with float32 accumulation for bf16.
Any other bf16 matmul is first widened to float32 (bf16 compute then ran at float32 speed), and a float32 one runs
on a slower fallback. Autodiff of `x @ W` gives the weight gradient as `x^T @ g`, a left operand contracted over
its first dim; in bf16 it gets a materialised row-major `x^T` instead (one copy, much cheaper than the widened
matmul). `g @ W^T` (right operand contracted over its last dim) is taken as it lies.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp


def row_major_transpose(a_XMN):
  """Swaps the last two dims into a materialised row-major array.

  A plain transpose reaches the compiler as a layout change that it folds into the consuming matmul (the slow form
  above). Going through a size-1 axis gives a transpose the compiler materialises instead; it is still one copy.
  """
  *lead, m, n = a_XMN.shape
  return jnp.swapaxes(a_XMN.reshape(*lead, m, 1, n), -3, -1).reshape(*lead, n, m)


def _batch(a, b):
  """Dot batch dims: the leading one when both operands are [N, ., .], none for matrices."""
  return ((0,), (0,)) if a.ndim == 3 else ((), ())


def matmul(a_MK, b_KN):
  """a @ b accumulated in float32 (optionally over a leading batch dim of both)."""
  return jax.lax.dot_general(a_MK, b_KN, (((a_MK.ndim - 1,), (b_KN.ndim - 2,)), _batch(a_MK, b_KN)),
                             preferred_element_type=jnp.float32)


def matmul_tn(a_KM, b_KN):
  """a.T @ b in float32 (a weight gradient). Below float32, from a materialised a.T: the only form that stays on
  the bf16 matmul (2-3x faster). In float32 the transposed form is kept: the copy was faster alone, but whole
  train steps measured no faster with it."""
  if a_KM.dtype == jnp.float32:
    return jax.lax.dot_general(a_KM, b_KN, (((a_KM.ndim - 2,), (b_KN.ndim - 2,)), _batch(a_KM, b_KN)),
                               preferred_element_type=jnp.float32)
  return matmul(row_major_transpose(a_KM), b_KN)


def matmul_nt(a_MK, b_NK):
  """a @ b.T in float32 (an input gradient). A right operand contracted over its last dim is a form the fast
  library takes as it lies (a materialised b.T measured no faster)."""
  return jax.lax.dot_general(a_MK, b_NK, (((a_MK.ndim - 1,), (b_NK.ndim - 1,)), _batch(a_MK, b_NK)),
                             preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def linear(x, w, n_in: int = 1, out_dtype=None):
  """x[..., *in] @ w[*in, *out] -> [..., *out] in `out_dtype` (default x's), accumulated in float32."""
  return _linear_fwd(x, w, n_in, out_dtype)[0]


def _flat(x, w, n_in):
  k = math.prod(w.shape[:n_in])
  if x.shape[x.ndim - n_in:] != w.shape[:n_in]:
    raise ValueError(f"linear: input dims {x.shape[x.ndim - n_in:]} of x {x.shape} do not match the weight's "
                     f"{w.shape[:n_in]} (weight {w.shape})")
  return x.reshape(-1, k), w.reshape(k, -1)


def _linear_fwd(x, w, n_in, out_dtype):
  x_MK, w_KN = _flat(x, w, n_in)
  y = matmul(x_MK, w_KN).astype(out_dtype or x.dtype)
  return y.reshape(*x.shape[:x.ndim - n_in], *w.shape[n_in:]), (x_MK, w_KN, x.shape, w.shape)


def _linear_bwd(n_in, out_dtype, res, g):
  x_MK, w_KN, x_shape, w_shape = res
  g_MN = g.reshape(x_MK.shape[0], w_KN.shape[1]).astype(x_MK.dtype)
  dx = matmul_nt(g_MN, w_KN).astype(x_MK.dtype).reshape(x_shape)
  dw = matmul_tn(x_MK, g_MN).astype(w_KN.dtype).reshape(w_shape)
  return dx, dw


linear.defvjp(_linear_fwd, _linear_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def linear_shared(x, ws, n_in: int = 1):
  """`[linear(x, w, n_in) for w in ws]` as one matmul: the weights joined along their (flattened) output dims.

  Projections of one input (attention's q, k and v) are each too narrow for the matmul library's best rate on a CPU
  (on a 2-core Xeon, [2048 x 256] x [256 x 128] ran at 140 GFLOP/s, [2048 x 256] x [256 x 512] at 264); joined, the
  forward, the input gradient and the weight gradient are one product each, and in bf16 the input is transposed
  once, not per weight. Joining copies the weights (small) and, in the backward, the output gradients.
  """
  return _linear_shared_fwd(x, ws, n_in)[0]


def _joined(ws, k: int):
  """The weights as one [K, N1 + N2 + ...] matrix (their output dims flattened)."""
  return jnp.concatenate([w.reshape(k, -1) for w in ws], axis=1)


def _linear_shared_fwd(x, ws, n_in):
  x_MK = [_flat(x, w, n_in) for w in ws][0][0]  # (every weight's input dims checked)
  y_MN = matmul(x_MK, _joined(ws, x_MK.shape[1])).astype(x.dtype)
  lead = x.shape[:x.ndim - n_in]
  outs, start = [], 0
  for w in ws:
    n = math.prod(w.shape[n_in:])
    outs.append(y_MN[:, start:start + n].reshape(*lead, *w.shape[n_in:]))
    start += n
  # The weights themselves are kept (what one `linear` per weight keeps), not their joined copy: the backward joins
  # them again, a small copy, rather than hold a second copy of every layer's weights until then.
  return tuple(outs), (x_MK, ws, x.shape)


def _linear_shared_bwd(n_in, res, gs):
  x_MK, ws, x_shape = res
  m = x_MK.shape[0]
  g_MN = jnp.concatenate([g.reshape(m, -1).astype(x_MK.dtype) for g in gs], axis=1)
  dx = matmul_nt(g_MN, _joined(ws, x_MK.shape[1])).astype(x_MK.dtype).reshape(x_shape)
  dw_KN = matmul_tn(x_MK, g_MN)
  dws, start = [], 0
  for w in ws:
    n = math.prod(w.shape[n_in:])
    dws.append(dw_KN[:, start:start + n].astype(w.dtype).reshape(w.shape))
    start += n
  return dx, tuple(dws)


linear_shared.defvjp(_linear_shared_fwd, _linear_shared_bwd)
