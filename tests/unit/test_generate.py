"""KV-cache generation: cached decoding equals the full forward, bounded chunk cache, batching, sampling, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from llama4_jax.config import VisionConfig, model_config
from llama4_jax.generate import GenerationError, generate, piece_size
from llama4_jax.model import decode_block, embed_prompt, forward, init_cache, init_params
from llama4_jax.sampling import Sampling, filter_logits
from tests.conftest import tiny_config

TOL = 1e-4
CFG = tiny_config(moe_impl="dense")  # chunk 8, NoPE every 4th layer, temperature tuning from position 3
block = jax.jit(decode_block, static_argnums=0)


@pytest.fixture(scope="module")
def params():
  return init_params(CFG, jax.random.key(0))


def _decode_one_by_one(cfg, params, tokens, cache_len, emb=None):
  cache = init_cache(cfg, tokens.shape[0], cache_len)
  out = []
  for i in range(tokens.shape[1]):
    logits, cache = block(cfg, params, tokens[:, i:i + 1], cache, None, None if emb is None else emb[:, i:i + 1])
    out.append(np.asarray(logits[:, 0]))
  return np.stack(out, 1), cache


def test_token_by_token_decode_equals_full_forward_past_two_chunks(params):
  tokens = np.random.RandomState(0).randint(0, CFG.vocab_size, (2, 29))  # 3.6 chunks of 8
  full = np.asarray(forward(CFG, params, tokens))
  dec, cache = _decode_one_by_one(CFG, params, jnp.asarray(tokens), 32)
  assert np.abs(full).max() > 0.1
  np.testing.assert_allclose(dec, full, atol=TOL, rtol=0)
  # Chunked layers hold the chunk only (8 slots), global layers the whole context.
  assert cache["layers"]["layer_0"]["k"].shape[3] == 8 and cache["layers"]["layer_3"]["k"].shape[3] == 32
  np.testing.assert_array_equal(cache["length"], [29, 29])


def test_temperature_tuning_matters_in_that_comparison(params):
  tokens = np.random.RandomState(0).randint(0, CFG.vocab_size, (1, 29))
  off = np.asarray(forward(CFG.replace(attn_temperature_tuning=False), params, tokens))
  assert np.abs(off - np.asarray(forward(CFG, params, tokens))).max() > 1e-3


@pytest.mark.parametrize("piece", [8, 2])
def test_prefill_in_pieces_equals_full_forward(params, piece):
  tokens = np.random.RandomState(1).randint(0, CFG.vocab_size, (2, 24))
  cache = init_cache(CFG, 2, 32)
  outs = []
  for s in range(0, 24, piece):
    logits, cache = block(CFG, params, jnp.asarray(tokens[:, s:s + piece]), cache)
    outs.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(outs, 1), np.asarray(forward(CFG, params, tokens)), atol=TOL, rtol=0)


def test_prefill_piece_must_divide_the_chunk(params):
  with pytest.raises(GenerationError, match="prefill_piece=3 must divide model.attention_chunk_size=8"):
    piece_size(CFG, 3)
  with pytest.raises(ValueError, match="16 tokens cross a chunk"):
    decode_block(CFG, params, jnp.zeros((1, 16), jnp.int32), init_cache(CFG, 1, 32))


def test_unequal_prompt_lengths_do_not_change_any_result(params):
  rs = np.random.RandomState(2)
  prompts = [list(rs.randint(0, 90, n)) for n in (5, 13, 21)]
  together = generate(CFG, params, prompts, max_new_tokens=10, sampling=Sampling(stop_tokens=()))
  assert all(len(t) == 10 for t in together)
  # Each row's greedy tokens are the argmax of that prompt's own full forward over prompt + tokens so far.
  for prompt, new in zip(prompts, together):
    seq = np.array([prompt + new])
    logits = np.asarray(forward(CFG, params, seq))[0]
    np.testing.assert_array_equal(np.argmax(logits[len(prompt) - 1:-1], -1), new)


def test_batched_decode_logits_equal_full_forward_per_row(params):
  """The cache with rows of different lengths: row logits after each step equal each row's own forward."""
  rs = np.random.RandomState(3)
  lengths = [3, 11, 19]
  tokens = np.zeros((3, 19), np.int32)
  for b, n in enumerate(lengths):
    tokens[b, :n] = rs.randint(0, 90, n)
  valid = np.arange(19)[None] < np.array(lengths)[:, None]
  cache = init_cache(CFG, 3, 32)
  for s in (0, 8, 16):  # chunk-aligned pieces, as generate prefills
    _, cache = block(CFG, params, jnp.asarray(tokens[:, s:s + 8]), cache, jnp.asarray(valid[:, s:s + 8]))
  np.testing.assert_array_equal(cache["length"], lengths)
  nxt = rs.randint(0, 90, (3, 1))
  logits, _ = block(CFG, params, jnp.asarray(nxt), cache)
  for b, n in enumerate(lengths):
    ref = np.asarray(forward(CFG, params, np.concatenate([tokens[b:b + 1, :n], nxt[b:b + 1]], 1)))[0, -1]
    np.testing.assert_allclose(np.asarray(logits)[b, 0], ref, atol=TOL, rtol=0)


def test_chunked_cache_stays_at_the_chunk_size(params):
  prompts = [list(range(1, 40))]
  cfg = CFG.replace(max_position_embeddings=4096)
  from llama4_jax.generate import _start
  for new in (5, 60):
    _, state, _, _ = _start(cfg, params, prompts, new, Sampling(stop_tokens=()), None, None, None)
    for name, layer in state["cache"]["layers"][0].items():  # the decode loop's per-super-block cache [B, G, S, K]
      slots = layer["k"].shape[2]
      assert slots == (8 if name != "layer_3" else 40 + new + (-(40 + new)) % 8)


def test_decode_with_images_equals_full_forward():
  v = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128, image_size=16,
                   patch_size=4, projector_input_dim=16, projector_output_dim=16, vision_output_dim=16,
                   image_token_id=90)
  cfg = CFG.replace(vision=v)
  params = init_params(cfg, jax.random.key(1))
  rs = np.random.RandomState(4)
  row = list(rs.randint(0, 80, 4)) + [88] + [90] * 4 + [89] + list(rs.randint(0, 80, 12))  # one tile, 4 patches
  tokens = np.array([row])
  pixels = rs.uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32)
  full = np.asarray(forward(cfg, params, tokens, pixel_values=pixels))
  emb = embed_prompt(cfg, params, jnp.asarray(tokens), jnp.asarray(pixels[None]))
  dec, _ = _decode_one_by_one(cfg, params, jnp.asarray(tokens), 24, emb)
  np.testing.assert_allclose(dec, full, atol=TOL, rtol=0)
  text_only = np.asarray(forward(cfg, params, np.where(tokens == 90, 1, tokens)))
  assert np.abs(text_only[0, -1] - full[0, -1]).max() > 1e-3  # the image really is in those logits


def test_generate_with_an_image_prompt_matches_forward():
  from llama4_jax.data.tokenizer import Tokenizer
  config = base.get_config("tiny_vl")
  config.model.update(num_hidden_layers=4, hidden_size=64, intermediate_size=64, intermediate_size_mlp=64,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_local_experts=2)
  config.model.vision.update(num_hidden_layers=1)
  cfg = model_config(config)
  params = init_params(cfg, jax.random.key(2))
  tok = Tokenizer.default()
  prompt = tok.encode("Look: <|image|> what?", bos=True, allowed_special={"<|image|>"})
  image = np.zeros((40, 70, 3), np.uint8)
  image[5:30, 10:50] = (200, 30, 30)
  out = generate(cfg, params, [prompt], max_new_tokens=4, images=[[image]], tokenizer=tok,
                 sampling=Sampling(stop_tokens=()))[0]
  from llama4_jax.data import image as image_lib
  tiles, grid = image_lib.preprocess_image(image, 32, 4)
  expanded = image_lib.expand_image_placeholders(prompt, [grid], 16, tok)
  logits = np.asarray(forward(cfg, params, np.array([expanded + out]), pixel_values=tiles))[0]
  np.testing.assert_array_equal(np.argmax(logits[len(expanded) - 1:-1], -1), out)
  with pytest.raises(GenerationError, match="prompt 0: 1 <\\|image\\|> placeholder but 2 images"):
    generate(cfg, params, [prompt], max_new_tokens=2, images=[[image, image]], tokenizer=tok)
  with pytest.raises(GenerationError, match="holds <\\|patch\\|> tokens .* but no images"):
    generate(cfg, params, [expanded], max_new_tokens=2, tokenizer=tok)


def test_sampling_is_seeded_and_filters_work(params):
  prompts = [[1, 2, 3, 4]]
  hot = lambda seed, **kw: generate(CFG, params, prompts, max_new_tokens=12,  # noqa: E731
                                    sampling=Sampling(temperature=1.5, seed=seed, stop_tokens=(), **kw))[0]
  assert hot(0) == hot(0) and hot(0) != hot(1)
  greedy = generate(CFG, params, prompts, max_new_tokens=12, sampling=Sampling(stop_tokens=()))[0]
  assert hot(0, top_k=1) == greedy
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.asarray(filter_logits(logits, 0, 0.75)) > -1e30  # 0.5 + 0.3 reaches 0.75
  np.testing.assert_array_equal(kept, [[True, True, False, False]])
  kept = np.asarray(filter_logits(logits, 3, 1.0)) > -1e30
  np.testing.assert_array_equal(kept, [[True, True, True, False]])


def test_stop_tokens_end_a_row(params):
  greedy = generate(CFG, params, [[5, 6, 7]], max_new_tokens=12, sampling=Sampling(stop_tokens=()))[0]
  stop = greedy[4]
  first = greedy.index(stop)
  out = generate(CFG, params, [[5, 6, 7]], max_new_tokens=12, sampling=Sampling(stop_tokens=(stop,)))[0]
  assert out == greedy[:first + 1]


@pytest.mark.parametrize("prompts, kwargs, message", [
    ([[]], {}, "prompt 0 is empty"),
    ([], {}, "no prompts"),
    ([[1] * 4090], {}, "exceeds the model's maximum context model.max_position_embeddings=4096"),
    ([[1, 2]], dict(sampling=Sampling(stop_tokens=("<|nope|>",))), "unknown stop token '<|nope|>'"),
    ([[1, 2]], dict(sampling=Sampling(stop_tokens=(500,))), "stop token 500 is not a token id"),
    ([[1, 200]], {}, "outside \\[0, 97\\)"),
    ([[1, 2]], dict(images=[["x.png"]]), "no vision tower"),
])
def test_bad_generation_input_is_a_clear_error(params, prompts, kwargs, message):
  with pytest.raises(GenerationError, match=message):
    generate(CFG, params, prompts, max_new_tokens=8, **kwargs)


def test_sampling_settings_are_checked():
  for kwargs, message in ((dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_k=-2), "top_k")):
    with pytest.raises(ValueError, match=message):
      Sampling(**kwargs)
  assert dataclasses.replace(Sampling(), temperature=0.6).temperature == 0.6


def test_cache_size_formula_matches_the_allocated_cache_and_scout_figures():
  from llama4_jax.cache_size import cache_bytes
  cache = init_cache(CFG, 3, 40, dtype="float32")
  allocated = sum(x.nbytes for layer in cache["layers"].values() for x in layer.values())
  assert allocated == cache_bytes(CFG, 40, "float32", batch=3)["total_bytes"]
  scout = model_config(base.get_config("scout"))
  r = cache_bytes(scout, 10_000_000)
  assert (r["chunked_layers"], r["global_layers"]) == (36, 12)
  assert r["global_bytes_per_token"] == 12 * 2 * 8 * 128 * 2  # 49,152 B: K and V, 8 KV heads of 128, bf16
  assert r["chunked_bytes"] == 36 * 8192 * 2 * 8 * 128 * 2  # one 8192-token chunk per RoPE layer, whatever the context


def test_prefill_memory_grows_linearly_with_the_prompt(params):
  """A prefill piece attends over the cache: its scratch memory is piece x context, so doubling the context at most
  doubles it (a full [L, L] attention would quadruple)."""
  cfg = CFG.replace(max_position_embeddings=1 << 16)

  def temp_bytes(context):
    cache = jax.eval_shape(lambda: init_cache(cfg, 1, context))
    tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    compiled = block.lower(cfg, params, tokens, cache).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(4096), temp_bytes(8192)
  assert large <= 2.2 * small, (small, large)


def test_forward_joins_q_k_v_and_the_cached_decode_does_not(params, monkeypatch):
  """A forward without a cache runs q, k and v as one product (ops.linear.linear_shared); a KV-cache step keeps
  three (joining copies the weights, which a decode step's few rows do not repay). The cached-decode-equals-forward
  tests above then compare the two paths."""
  from llama4_jax.model import apply
  from llama4_jax.model import attention as attention_module
  joined = []
  real = attention_module.linear_shared
  monkeypatch.setattr(attention_module, "linear_shared", lambda *a, **k: joined.append(1) or real(*a, **k))
  tokens = jnp.zeros((2, 9), jnp.int32)
  jax.make_jaxpr(lambda p: apply(CFG, p, tokens))(params)
  assert joined  # (traced once per layer, or more where a scan body is traced twice)
  joined.clear()
  jax.make_jaxpr(lambda p, c: decode_block(CFG, p, tokens[:, :1], c))(params, init_cache(CFG, 2, 16))
  assert not joined
