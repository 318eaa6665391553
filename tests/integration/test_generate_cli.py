"""`python -m llama4_jax.generate` on a Hugging Face directory (a training workdir is covered in test_train_loop)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from llama4_jax.config import VisionConfig
from llama4_jax.convert.hf import save_hf
from llama4_jax.model import init_params
from tests.conftest import tiny_config
from tests.integration import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_generate(*args):
  env = subprocess_env()
  proc = subprocess.run([sys.executable, "-m", "llama4_jax.generate", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  vision = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                        image_size=16, patch_size=4, projector_input_dim=16, projector_output_dim=16,
                        vision_output_dim=16, image_token_id=3840 + 92, max_num_tiles=4)
  cfg = tiny_config(vocab_size=4096, bos_token_id=3840, eos_token_id=3841, pad_token_id=3858,  # embedded tokenizer
                    vision=vision)
  params = jax.tree_util.tree_map(np.asarray, init_params(cfg, jax.random.key(0)))
  return save_hf(cfg, params, str(tmp_path_factory.mktemp("ckpt") / "hf"))


def test_generate_command_streams_tokens_from_a_hugging_face_directory(hf_dir, tmp_path):
  from PIL import Image
  image = np.zeros((20, 40, 3), np.uint8)  # a 1 x 2 tile grid + global tile at 16 px tiles
  Image.fromarray(image).save(tmp_path / "img.png")
  code, out, err = run_generate(f"--checkpoint={hf_dir}", "--prompt=The function", "--max_new_tokens=6",
                                "--chat", "--temperature=0.6", "--top_p=0.9", f"--image={tmp_path / 'img.png'}")
  assert code == 0, err
  assert out.strip(), "nothing was printed"


def test_generate_command_errors_name_the_problem(hf_dir, tmp_path):
  from llama4_jax.generate import GenerationError, load_checkpoint
  with pytest.raises(GenerationError, match="neither a training workdir"):
    load_checkpoint(str(tmp_path))
  bad = tmp_path / "broken.png"
  bad.write_text("not an image")
  code, _, err = run_generate(f"--checkpoint={hf_dir}", "--prompt=x", f"--image={bad}")
  assert code != 0 and "broken.png" in err
