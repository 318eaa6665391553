"""Online RL on image prompts: the chat prompt's image token, sampling with the pictures, the rollout batch's tiles
and a policy update that sees them (tiny_vl with random weights)."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from configs import base
from llama4_jax.config import model_config
from llama4_jax.data import verifiable, visual_tasks
from llama4_jax.data.tokenizer import ChatFormat, Tokenizer
from llama4_jax.model import param_shapes
from llama4_jax.sampling import Sampling
from llama4_jax.train import rl_stage, rollout


@pytest.fixture(scope="module")
def setup():
  tok = Tokenizer.default()
  cfg = model_config(base.get_config("tiny_vl"))
  rs = np.random.RandomState(0)  # random leaves of the right shapes: sampling needs finite logits, not init's scheme
  params = jax.tree_util.tree_map(lambda s: (0.1 * rs.randn(*s.shape)).astype(s.dtype), param_shapes(cfg))
  return tok, cfg, params


def test_image_prompt_holds_one_image_token_then_the_question():
  tok = Tokenizer.default()
  chat = ChatFormat(tok)
  problem = verifiable.make_problem("image_sum", 1, np.random.default_rng(0))
  ids = rollout.prompt_ids(problem, chat)
  image_id = tok.special_tokens[visual_tasks.IMAGE_PLACEHOLDER]
  assert ids.count(image_id) == 1
  text = problem.prompt.replace(visual_tasks.IMAGE_PLACEHOLDER, "")
  # The same dialog as a text prompt, with the image token first in the user's content.
  want = chat.encode_dialog_prompt([{"role": "user", "content": text}])
  header = chat.encode_header("user")
  cut = 1 + len(header)
  assert ids[:cut] + ids[cut + 1:] == want and ids[cut] == image_id


def test_sample_groups_with_images_expands_prompts_and_keeps_tiles(setup):
  tok, cfg, params = setup
  problems = list(verifiable.problems(["image_count", "image_sort"], [1], n=2, seed=1))
  ro = rollout.sample_groups(cfg, params, problems, 2, max_new_tokens=3, sampling=Sampling(temperature=1.0, seed=3),
                             tokenizer=tok)
  v = cfg.vision
  assert ro.pixels_B is not None and len(ro.pixels_B) == 4
  for b, (prompt, tiles) in enumerate(zip(ro.prompt_tokens, ro.pixels_B)):
    assert tiles.shape[1:] == (v.num_channels, v.image_size, v.image_size) and tiles.shape[0] >= 1
    assert sum(t == v.image_token_id for t in prompt) == tiles.shape[0] * v.tokens_per_tile
    assert ro.rewards_PG.reshape(-1)[b] == verifiable.check(problems[b // 2], ro.completions[b])
  # The group's rows share the picture; the two problems' pictures differ.
  np.testing.assert_array_equal(ro.pixels_B[0], ro.pixels_B[1])
  assert ro.pixels_B[0].shape != ro.pixels_B[2].shape or not np.array_equal(ro.pixels_B[0], ro.pixels_B[2])
  batch = rollout.rollout_batch(ro, 192, tiles_per_row=v.max_num_tiles + 1)
  assert batch["pixels"].shape == (4, v.max_num_tiles + 1, v.num_channels, v.image_size, v.image_size)
  for b, tiles in enumerate(ro.pixels_B):
    np.testing.assert_array_equal(batch["pixels"][b, :len(tiles)], tiles)
    assert not batch["pixels"][b, len(tiles):].any()
  most = max(len(t) for t in ro.pixels_B)
  assert most > 1  # a 48 x 48 dots picture: tiles plus the global tile
  with pytest.raises(ValueError, match=f"{most} image tiles but tiles_per_row={most - 1}"):
    rollout.rollout_batch(ro, 192, tiles_per_row=most - 1)


def test_update_log_probs_see_the_picture(setup):
  # The reply's log-probs under the policy change when the tiles are blanked: the update trains on the image.
  tok, cfg, params = setup
  problems = [verifiable.make_problem("image_number", 2, np.random.default_rng(5))]
  ro = rollout.sample_groups(cfg, params, problems, 2, max_new_tokens=3, sampling=Sampling(temperature=1.0, seed=1),
                             tokenizer=tok)
  batch = rollout.rollout_batch(ro, 192, tiles_per_row=cfg.vision.max_num_tiles + 1)
  logp = jax.jit(functools.partial(rollout.sequence_token_logprobs, cfg))
  with_image = np.asarray(logp(params, batch))
  blank = np.asarray(logp(params, {**batch, "pixels": np.zeros_like(batch["pixels"])}))
  mask = batch["loss_mask"].astype(bool)
  assert mask.any() and np.all(with_image[mask] < 0)
  assert np.max(np.abs(with_image[mask] - blank[mask])) > 1e-4


def test_text_model_refuses_image_problems_and_driver_groups_mix(setup):
  tok, cfg, params = setup
  text_cfg = cfg.replace(vision=None)
  problems = [verifiable.make_problem("image_count", 1, np.random.default_rng(0))]
  with pytest.raises(ValueError, match="image_count.*vision tower"):
    rollout.sample_groups(text_cfg, None, problems, 2, max_new_tokens=2, sampling=Sampling(temperature=1.0),
                          tokenizer=tok)
  # A driver batch mixing a round of text groups (no tiles) with image groups: text rows get zero tiles.
  image_group = {"prompt_tokens": ((1, 2),) * 2, "completion_tokens": ((3,),) * 2, "lengths": np.ones(2, np.int32),
                 "finished": np.ones(2, bool), "pixels": (np.ones((2, 3, 4, 4), np.float32),) * 2}
  text_group = {**image_group, "pixels": None}
  ro = rl_stage._as_rollouts([text_group, image_group], np.zeros((2, 2), np.float32))
  assert [p.shape[0] for p in ro.pixels_B] == [0, 0, 2, 2]
  batch = rollout.rollout_batch(ro, 4, tiles_per_row=3)
  assert batch["pixels"].shape == (4, 3, 3, 4, 4) and not batch["pixels"][:2].any() and batch["pixels"][2:, :2].all()
