"""ops.linear: the projection with a row-major backward (values, gradients, and the bf16 fast path it exists for),
and the same fast path in the MoE expert blocks and the attention core."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama4_jax.ops.linear import linear, linear_shared, matmul_nt, matmul_tn, row_major_transpose
from llama4_jax.ops.moe import moe_blocked, route


def _args(rs, x_shape, w_shape, dtype=jnp.float32):
  return (jnp.asarray(rs.randn(*x_shape).astype(np.float32)).astype(dtype),
          jnp.asarray((rs.randn(*w_shape) / 4).astype(np.float32)).astype(dtype))


@pytest.mark.parametrize("x_shape, w_shape, n_in, spec", [
    ((2, 5, 12), (12, 3, 4), 1, "bld,dhk->blhk"),      # q/k/v projection (odd sizes)
    ((2, 5, 3, 4), (3, 4, 12), 2, "blhk,hkd->bld"),    # attention output over heads x head_dim
    ((7, 12), (12, 2, 6), 1, "td,dcf->tcf"),           # fused gate/up
])
def test_linear_matches_einsum_values_and_gradients_fp32(x_shape, w_shape, n_in, spec):
  rs = np.random.RandomState(0)
  x, w = _args(rs, x_shape, w_shape)
  ref = lambda x, w: jnp.einsum(spec, x, w)  # noqa: E731
  y = linear(x, w, n_in)
  assert y.shape == ref(x, w).shape and y.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref(x, w)), rtol=1e-5, atol=1e-5)
  cot = jnp.asarray(rs.randn(*y.shape).astype(np.float32))
  grads = jax.vjp(lambda x, w: linear(x, w, n_in), x, w)[1](cot)
  grads_ref = jax.vjp(ref, x, w)[1](cot)
  for name, g, gr in zip("xw", grads, grads_ref):
    assert g.shape == gr.shape, name
    np.testing.assert_allclose(np.asarray(g), np.asarray(gr), rtol=1e-5, atol=1e-5, err_msg=name)


def test_linear_bf16_gradients_match_fp32_of_the_same_inputs_and_out_dtype():
  rs = np.random.RandomState(1)
  x, w = _args(rs, (3, 40, 32), (32, 48), jnp.bfloat16)
  cot = jnp.asarray(rs.randn(3, 40, 48).astype(np.float32))
  y, pull = jax.vjp(lambda x, w: linear(x, w, 1, jnp.float32), x, w)
  assert y.dtype == jnp.float32  # the lm head's float32 logits
  dx, dw = pull(cot)
  assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
  xf, wf = x.astype(jnp.float32), w.astype(jnp.float32)
  np.testing.assert_allclose(np.asarray(y), np.asarray(xf @ wf), rtol=1e-5, atol=1e-4)  # fp32 accumulation
  cot_bf = cot.astype(jnp.bfloat16).astype(jnp.float32)  # the backward takes the cotangent in the input dtype
  for name, g, gr in (("x", dx, cot_bf @ wf.T), ("w", dw, jnp.einsum("bld,blf->df", xf, cot_bf))):
    scale = float(jnp.abs(gr).max())
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(gr), atol=1e-2 * scale, err_msg=name)


@pytest.mark.parametrize("shape", [(5, 7), (3, 5, 7), (2, 1, 4)])
def test_row_major_transpose_swaps_the_last_two_dims(shape):
  a = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  np.testing.assert_array_equal(np.asarray(row_major_transpose(a)), np.swapaxes(np.asarray(a), -1, -2))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_transposed_matmuls(dtype):
  rs = np.random.RandomState(2)
  a, b = _args(rs, (9, 6), (9, 5), dtype)
  af, bf = a.astype(jnp.float32), b.astype(jnp.float32)
  np.testing.assert_allclose(np.asarray(matmul_tn(a, b)), np.asarray(af.T @ bf), rtol=1e-5, atol=1e-5)
  c, d = _args(rs, (4, 6), (7, 6), dtype)
  np.testing.assert_allclose(np.asarray(matmul_nt(c, d)), np.asarray(c.astype(jnp.float32) @ d.astype(jnp.float32).T),
                             rtol=1e-5, atol=1e-5)


def test_linear_shared_equals_one_linear_per_weight_values_and_gradients():
  """q, k and v as one product (odd sizes, different output shapes): each output and every gradient equals its own
  `linear`'s, and the compiled forward + backward holds 3 matmuls (one product, one input and one weight
  gradient) instead of 9."""
  rs = np.random.RandomState(5)
  x = jnp.asarray(rs.randn(2, 7, 12).astype(np.float32))
  ws = tuple(jnp.asarray((rs.randn(*shape) / 4).astype(np.float32)) for shape in ((12, 3, 5), (12, 1, 5), (12, 6)))
  outs = linear_shared(x, ws)
  refs = [linear(x, w) for w in ws]
  for i, (o, r) in enumerate(zip(outs, refs)):
    assert o.shape == r.shape and o.dtype == r.dtype, i
    np.testing.assert_allclose(np.asarray(o), np.asarray(r), rtol=1e-5, atol=1e-6, err_msg=str(i))
  cots = [jnp.asarray(rs.randn(*r.shape).astype(np.float32)) for r in refs]
  loss = lambda x, ws: sum(jnp.sum(o * c) for o, c in zip(linear_shared(x, ws), cots))  # noqa: E731
  loss_ref = lambda x, ws: sum(jnp.sum(linear(x, w) * c) for w, c in zip(ws, cots))  # noqa: E731
  dx, dws = jax.grad(loss, argnums=(0, 1))(x, ws)
  dx_ref, dws_ref = jax.grad(loss_ref, argnums=(0, 1))(x, ws)
  np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=1e-5, atol=1e-5)
  for i, (g, gr) in enumerate(zip(dws, dws_ref)):
    assert g.shape == gr.shape, i
    np.testing.assert_allclose(np.asarray(g), np.asarray(gr), rtol=1e-5, atol=1e-5, err_msg=f"weight {i}")
  # (sin, not a product with constants: XLA turns a reduced product into dots of its own)
  count = lambda f: len(_dot_operand_dtypes(jax.jit(jax.value_and_grad(  # noqa: E731
      lambda x, ws: sum(jnp.sum(jnp.sin(o)) for o in f(x, ws)), argnums=(0, 1))).lower(x, ws).compile().as_text()))
  assert count(linear_shared) == 3 and count(lambda x, ws: [linear(x, w) for w in ws]) == 9


def test_linear_shared_bf16_matmuls_stay_bf16_and_reject_mismatched_inputs():
  rs = np.random.RandomState(6)
  x = jnp.asarray(rs.randn(64, 48).astype(np.float32)).astype(jnp.bfloat16)
  ws = tuple(jnp.asarray(rs.randn(48, n).astype(np.float32) / 8).astype(jnp.bfloat16) for n in (32, 16, 16))
  fn = jax.jit(jax.value_and_grad(
      lambda x, ws: sum(o.astype(jnp.float32).sum() for o in linear_shared(x, ws)), argnums=(0, 1)))
  dtypes = _dot_operand_dtypes(fn.lower(x, ws).compile().as_text())
  assert len(dtypes) == 3 and all(d == ("bf16", "bf16") for d in dtypes), dtypes
  with pytest.raises(ValueError, match=r"input dims \(48,\).*weight's \(40,\)"):
    linear_shared(x, (ws[0], jnp.ones((40, 3), jnp.bfloat16)))


def test_linear_rejects_mismatched_input_dims():
  with pytest.raises(ValueError, match=r"input dims \(8,\).*weight's \(6,\)"):
    linear(jnp.ones((2, 8)), jnp.ones((6, 3)))


def _dot_operand_dtypes(hlo_text: str):
  """(lhs, rhs) element types of every dot in a compiled HLO module (operands are looked up in their computation)."""
  found = []
  for computation in hlo_text.split("\n\n"):
    lines = computation.splitlines()
    for line in lines:
      m = re.search(r" dot\((%[\w.\-]+), (%[\w.\-]+)\)", line)
      if not m:
        continue
      types = []
      for operand in m.groups():
        for other in lines:
          t = re.search(re.escape(operand) + r"(?::| =) (\w+)\[", other)
          if t:
            types.append(t.group(1))
            break
      found.append(tuple(types))
  return found


def test_bf16_backward_matmuls_stay_bf16_on_cpu():
  """The reason the op exists: every matmul of a bf16 projection's forward and backward, and of the MoE experts'
  backward (capacity part and overflow blocks), takes bf16 operands in the compiled module. With autodiff's transposed forms XLA:CPU
  widened them to float32 (the bf16 step then ran at float32 speed)."""
  rs = np.random.RandomState(3)
  x, w = _args(rs, (64, 48), (48, 3, 32), jnp.bfloat16)
  fn = jax.jit(jax.value_and_grad(lambda x, w: linear(x, w).astype(jnp.float32).sum(), argnums=(0, 1)))
  dtypes = _dot_operand_dtypes(fn.lower(x, w).compile().as_text())
  assert len(dtypes) == 3 and all(d == ("bf16", "bf16") for d in dtypes), dtypes

  t, d, f, e = 256, 32, 48, 4
  x_TD = jnp.asarray(rs.randn(t, d).astype(np.float32)).astype(jnp.bfloat16)
  scores_TK, experts_TK, _ = route(x_TD, jnp.asarray(rs.randn(d, e).astype(np.float32)), 1)
  gate_up = jnp.asarray(rs.randn(e, d, 2, f).astype(np.float32) / 8).astype(jnp.bfloat16)
  down = jnp.asarray(rs.randn(e, f, d).astype(np.float32) / 8).astype(jnp.bfloat16)
  # Half the mean group as capacity: the overflow loop is in use too (the routing is a compile-time constant here).
  loss = lambda x, gu, dn: moe_blocked(x, scores_TK, experts_TK, gu, dn, capacity_factor=0.5).astype(  # noqa: E731
      jnp.float32).sum()
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x_TD, gate_up, down).compile().as_text()
  dtypes = _dot_operand_dtypes(hlo)
  assert "while" in hlo and len(dtypes) >= 9 and all(d == ("bf16", "bf16") for d in dtypes), dtypes


@pytest.mark.parametrize("chunked", [True, False])
def test_bf16_attention_matmuls_stay_bf16_on_cpu(chunked):
  """The attention core's matmuls (forward and hand-written backward) also take bf16 operands, for the banded
  chunked layers (whose operands arrive as transposed views) and the global ones."""
  from llama4_jax.ops.attention import chunked_self_attention, dot_product_attention, self_attention_masks
  rs = np.random.RandomState(4)
  b, l, h, g, k = 2, 64, 4, 2, 16
  q = jnp.asarray(rs.randn(b, l, h, k).astype(np.float32)).astype(jnp.bfloat16)
  kv = jnp.asarray(rs.randn(b, l, g, k).astype(np.float32)).astype(jnp.bfloat16)
  pos = jnp.broadcast_to(jnp.arange(l), (b, l))
  seg = jnp.ones((b, l), jnp.int32)
  if chunked:
    attend = lambda q, k, v: chunked_self_attention(q, k, v, pos, seg, 16, 0.25)  # noqa: E731
  else:
    mask = self_attention_masks(pos, seg, None)[0]
    attend = lambda q, k, v: dot_product_attention(q, k, v, mask, 0.25)  # noqa: E731
  fn = jax.jit(jax.value_and_grad(lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
  dtypes = _dot_operand_dtypes(fn.lower(q, kv, kv).compile().as_text())
  assert len(dtypes) >= 5 and all(d == ("bf16", "bf16") for d in dtypes), dtypes
