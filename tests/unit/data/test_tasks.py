"""seqio tasks: the embedded corpus with a held-out split, a mixture, and a TFDS source built locally."""

import numpy as np
import pytest

from llama4_jax.data import tasks


def test_embedded_task_splits_are_disjoint_and_deterministic():
  train = tasks.task_texts(tasks.EMBEDDED_TASK, "train")
  held_out = tasks.task_texts(tasks.EMBEDDED_TASK, "validation")
  assert len(train) > 1000 and 10 < len(held_out) < len(train) / 20
  assert not set(held_out) & set(train)
  assert held_out == tasks.task_texts(tasks.EMBEDDED_TASK, "validation")
  mixed = tasks.task_texts(tasks.EMBEDDED_MIXTURE, "validation", limit=5)
  assert len(mixed) == 5 and set(mixed) <= set(held_out)


def test_passkey_task_adds_pass_key_documents_to_train_only():
  train = tasks.task_texts(tasks.EMBEDDED_TASK, "train")
  with_keys = tasks.task_texts(tasks.PASSKEY_TASK, "train")
  assert len(with_keys) == len(train) + len(train) // tasks.PASSKEY_EVERY
  extra = [t for t in with_keys if t.startswith("The grass") or t.startswith("The pass key")]
  assert len(extra) == len(train) // tasks.PASSKEY_EVERY
  assert with_keys[tasks.PASSKEY_EVERY] in extra and [t for t in with_keys if t not in extra] == train
  key = extra[0].rsplit(" ", 1)[1].rstrip(".")
  assert key.isdigit() and len(key) == 5 and extra[0].count(key) == 3  # stated twice, answered once
  assert tasks.task_texts(tasks.PASSKEY_TASK, "validation") == tasks.task_texts(tasks.EMBEDDED_TASK, "validation")
  assert with_keys == tasks.task_texts(tasks.PASSKEY_TASK, "train")  # deterministic


def test_unknown_task_and_split_are_named():
  with pytest.raises(ValueError, match="no_such_task"):
    tasks.task_texts("no_such_task", "train")
  with pytest.raises(ValueError, match="'test'"):
    tasks.task_texts(tasks.EMBEDDED_TASK, "test")


def test_tfds_source_built_locally(tmp_path):
  import tensorflow_datasets as tfds

  texts = [f"document number {i} about packing and llamas" for i in range(30)]

  class TinyText(tfds.core.GeneratorBasedBuilder):
    """A 30-document text dataset, built offline in the test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"body": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(texts[:24]), "validation": self._generate_examples(texts[24:])}

    def _generate_examples(self, items):
      for i, t in enumerate(items):
        yield i, {"body": t}

  TinyText(data_dir=str(tmp_path)).download_and_prepare()
  name = tasks.register_tfds("tiny_text:1.0.0", str(tmp_path), text_key="body")
  got = tasks.task_texts(name, "validation")
  assert sorted(got) == sorted(texts[24:])
  assert len(tasks.task_texts(name, "train")) == 24

  # Through the training loop's data view, tokenised and packed.
  from configs import base
  from llama4_jax.config import from_config_dict
  from llama4_jax.train import data as train_data
  from configs import models
  data_cfg = base.data_config()
  data_cfg.update(tfds_name="tiny_text:1.0.0", tfds_data_dir=str(tmp_path), tfds_text_key="body", seq_len=16,
                  batch_size=2)
  docs = train_data.documents(data_cfg, from_config_dict(models.tiny()))
  assert len(docs["train"]) == 24 and len(docs["eval"]) == 6
  batch = next(iter(train_data.train_batches(data_cfg, docs["train"], seed=0)))
  assert batch["inputs"].shape == (2, 16) and np.all(batch["segment_ids"] > 0)


def test_missing_tfds_dir_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds_data_dir"):
    tasks.register_tfds("x:1.0.0", str(tmp_path / "nope"))
