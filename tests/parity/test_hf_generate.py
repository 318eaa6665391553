"""Greedy generation equals transformers 5.23.0 `generate` on the same random tiny checkpoint.

Prompts and outputs run past two attention chunks (chunk 8) with temperature tuning active (floor_scale 4). Our
batch holds prompts of different lengths; each row must equal Hugging Face generating that prompt alone (HF's
left-padded batches shift positions by the padding in its temperature tuning, see spec section 4.7).
"""

import numpy as np
import pytest
import torch

import llama4_jax
from llama4_jax.sampling import Sampling
from tests.parity.test_hf_parity import _hf_model

pytestmark = pytest.mark.parity


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  path = tmp_path_factory.mktemp("hf")
  hf = _hf_model({}, seed=3)
  hf.save_pretrained(path)
  cfg, params = llama4_jax.load_hf(str(path))
  return hf, cfg, params


def _hf_greedy(model, prompt, new, eos):
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=0)
  return out[0, len(prompt):].tolist()


def test_greedy_generation_equals_transformers(models):
  hf, cfg, params = models
  rs = np.random.RandomState(5)
  prompts = [rs.randint(0, cfg.vocab_size, n).tolist() for n in (4, 11, 19)]
  eos = 100  # a real token id, so rows may stop at different steps
  ours = llama4_jax.generate(cfg, params, prompts, max_new_tokens=14, sampling=Sampling(stop_tokens=(eos,)))
  for prompt, row in zip(prompts, ours):
    ref = _hf_greedy(hf, prompt, 14, eos)
    if eos in ref:
      ref = ref[:ref.index(eos) + 1]
    assert row == ref
  assert max(len(p) + len(r) for p, r in zip(prompts, ours)) > 2 * 8
