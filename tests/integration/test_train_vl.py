"""The vision-language main job (configs/default_vl.py) end to end on the smoke sizes, inside the 8-device process."""

import math

from configs import default_vl
from llama4_jax.train.loop import train_and_evaluate
from llama4_jax.train.metrics import read_metrics


def test_vision_language_smoke_run(tmp_path, capsys):
  config = default_vl.get_config("smoke")
  config.data.batch_size = 8  # the default mesh is data parallel over the 8 simulated devices
  rows = train_and_evaluate(config, str(tmp_path))
  assert [r["stage"] for r in rows] == ["pretrain", "vl_focus"]
  for r in rows:
    for key in ("eval_loss", "eval_image_answer_loss", "eval_blank_image_answer_loss"):
      assert math.isfinite(r[key]), (key, r)
  out = capsys.readouterr().out
  assert "held-out image questions, answer loss" in out
  records = read_metrics(str(tmp_path))
  assert any("eval_blank_image_answer_loss" in r for r in records)
  losses = [r["loss"] for r in records if "loss" in r]
  assert len(losses) == 10 and all(math.isfinite(x) for x in losses)
  # A second call finds both stages complete and trains nothing more.
  again = train_and_evaluate(config, str(tmp_path))
  assert [r.get("resumed") for r in again] == ["complete", "complete"]
