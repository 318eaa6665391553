"""seqio Tasks and Mixtures of raw text. The only module that touches seqio's registry.

Tasks yield {"text": string}; tokenisation and packing happen in the grain pipeline (`pipeline.py`), which reads the
examples through `task_texts`. Registered here:
  * `llama4_jax.python_docs`: the embedded corpus (Python 3.11 documentation, see data/assets/README.md), with a
    deterministic held-out 'validation' split of every `HELD_OUT_EVERY`-th document,
  * `llama4_jax.tfds.<name>`: any TFDS text dataset prepared under a local `data_dir` (`register_tfds`),
  * `llama4_jax.python_docs_mix`: a Mixture over the embedded task (a template for weighted mixtures),
  * `llama4_jax.python_docs_passkey`: the embedded corpus's train split with one synthetic pass-key document
    (data/passkey.py) after every `PASSKEY_EVERY`-th document; its validation split is the corpus's own held-out
    text, so losses stay comparable with `llama4_jax.python_docs` (the length-generalization studies train on it).
  * `llama4_jax.eval.<benchmark>`: the evaluation suite's benchmark families (llama4_jax/eval/suite.py) read from a
    local directory (`register_benchmark`), with the benchmark's metric as the task's metric function.
"""

from __future__ import annotations

import functools
import os

EMBEDDED_TASK = "llama4_jax.python_docs"
EMBEDDED_MIXTURE = "llama4_jax.python_docs_mix"
PASSKEY_TASK = "llama4_jax.python_docs_passkey"
PASSKEY_EVERY = 10
HELD_OUT_EVERY = 50
SPLITS = ("train", "validation")


@functools.lru_cache(maxsize=None)
def _seqio():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import seqio
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")  # tf.data only; never grab accelerator memory from JAX
  return seqio, tf


def _text_features():
  seqio, tf = _seqio()
  return {"text": seqio.Feature(seqio.PassThroughVocabulary(1), dtype=tf.string, add_eos=False, required=False,
                                rank=0)}


def _embedded_texts(split: str) -> list[str]:
  from llama4_jax.data.corpus import load_corpus
  docs = load_corpus()
  if split == "validation":
    return [d["text"] for d in docs if d["id"] % HELD_OUT_EVERY == 0]
  return [d["text"] for d in docs if d["id"] % HELD_OUT_EVERY != 0]


def _embedded_split(split: str, shuffle_files: bool = False, seed=None):
  del shuffle_files, seed
  _, tf = _seqio()
  return tf.data.Dataset.from_tensor_slices({"text": tf.constant(_embedded_texts(split), tf.string)})


def passkey_interleaved(texts: list[str], every: int = PASSKEY_EVERY, seed: int = 0) -> list[str]:
  """`texts` with a pass-key document after every `every`-th one (deterministic)."""
  from llama4_jax.data import passkey
  keys = iter(passkey.documents(len(texts) // every + 1, seed))
  out = []
  for i, text in enumerate(texts, 1):
    out.append(text)
    if i % every == 0:
      out.append(next(keys))
  return out


def _passkey_split(split: str, shuffle_files: bool = False, seed=None):
  del shuffle_files, seed
  _, tf = _seqio()
  texts = _embedded_texts(split)
  if split == "train":
    texts = passkey_interleaved(texts)
  return tf.data.Dataset.from_tensor_slices({"text": tf.constant(texts, tf.string)})


def register_embedded() -> str:
  seqio, _ = _seqio()
  if EMBEDDED_TASK not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(EMBEDDED_TASK, source=seqio.FunctionDataSource(_embedded_split, splits=SPLITS),
                           preprocessors=[], output_features=_text_features())
  if PASSKEY_TASK not in seqio.TaskRegistry.names():
    seqio.TaskRegistry.add(PASSKEY_TASK, source=seqio.FunctionDataSource(_passkey_split, splits=SPLITS),
                           preprocessors=[], output_features=_text_features())
  if EMBEDDED_MIXTURE not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(EMBEDDED_MIXTURE, [(EMBEDDED_TASK, 1.0)])
  return EMBEDDED_TASK


def register_tfds(tfds_name: str, data_dir: str, text_key: str = "text") -> str:
  """Registers a prepared TFDS dataset (e.g. 'my_corpus:1.0.0' under `data_dir`) as a text task; returns its name."""
  seqio, _ = _seqio()
  if not data_dir or not os.path.isdir(data_dir):
    raise FileNotFoundError(f"data.tfds_data_dir={data_dir!r} is not a directory with a prepared TFDS dataset")
  name = f"llama4_jax.tfds.{tfds_name.replace(':', '_').replace('/', '_')}"
  if name not in seqio.TaskRegistry.names():
    preprocessors = [] if text_key == "text" else [
        functools.partial(seqio.preprocessors.rekey, key_map={"text": text_key})]
    seqio.TaskRegistry.add(
        name, source=seqio.TfdsDataSource(tfds_name=tfds_name, tfds_data_dir=data_dir),
        preprocessors=preprocessors, output_features=_text_features())
  return name


def _benchmark_split(bench_name: str, data_dir: str, shots: int | None, seed: int, split: str,
                     shuffle_files: bool = False, seed_=None):
  del split, shuffle_files, seed_
  import dataclasses
  import json
  from llama4_jax.eval import suite
  _, tf = _seqio()
  examples = suite.load(bench_name, data_dir, shots, seed=seed)
  return tf.data.Dataset.from_tensor_slices({
      "inputs": tf.constant([ex.prompt for ex in examples], tf.string),
      "targets": tf.constant([ex.golds[0] for ex in examples], tf.string),
      "example": tf.constant([json.dumps(dataclasses.asdict(ex)) for ex in examples], tf.string)})


def _benchmark_metric(bench_name: str):
  """seqio metric_fn(targets, predictions) for one benchmark family: targets are the task's `example` JSON strings,
  predictions the model's answers (generated text, or the chosen choice index for log-likelihood tasks)."""
  def metric_fn(targets, predictions):
    from llama4_jax.eval import report, suite
    bench = suite.get(bench_name)
    examples = [report.example_from_json(t) for t in targets]
    return report.task_scores(bench, examples, list(predictions))["scores"]
  return metric_fn


def register_benchmark(name: str, data_dir: str, shots: int | None = None, seed: int = 0) -> str:
  """Registers benchmark family `name` (llama4_jax/eval/suite.py) read from `data_dir/<name>/` as the seqio Task
  `llama4_jax.eval.<name>` (re-registered when the directory, shots or seed change); returns the task name. Its
  single 'test' split yields {"inputs": prompt, "targets": first gold, "example": the Example as JSON}; its metric
  function scores predictions the way the benchmark reports them."""
  seqio, _ = _seqio()
  from llama4_jax.eval import suite
  suite.get(name)  # an unknown family fails here, naming the known ones
  task = f"llama4_jax.eval.{name}"
  source = seqio.FunctionDataSource(
      functools.partial(_benchmark_split, name, os.path.abspath(data_dir), shots, seed), splits=("test",))
  if task in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(task)
  seqio.TaskRegistry.add(task, source=source, preprocessors=[], output_features=_benchmark_features(),
                         metric_fns=[_benchmark_metric(name)])
  return task


def _benchmark_features():
  seqio, tf = _seqio()
  plain = dict(vocabulary=seqio.PassThroughVocabulary(1), dtype=tf.string, add_eos=False, required=False, rank=0)
  return {k: seqio.Feature(**plain) for k in ("inputs", "targets", "example")}


def benchmark_examples(name: str, data_dir: str, shots: int | None = None, seed: int = 0,
                       limit: int | None = None) -> list:
  """The Examples of benchmark `name` read through its seqio Task (first `limit`)."""
  from llama4_jax.eval import report
  seqio, _ = _seqio()
  task = seqio.get_mixture_or_task(register_benchmark(name, data_dir, shots, seed))
  ds = task.get_dataset(sequence_length=None, split="test", shuffle=False, use_cached=False)
  if limit:
    ds = ds.take(limit)
  return [report.example_from_json(ex["example"].decode("utf-8")) for ex in ds.as_numpy_iterator()]


def task_texts(name: str, split: str, limit: int | None = None) -> list[str]:
  """All texts of a registered seqio Task or Mixture split, in the source's deterministic order."""
  seqio, _ = _seqio()
  register_embedded()
  try:
    provider = seqio.get_mixture_or_task(name)
  except ValueError as e:
    raise ValueError(f"data.task={name!r} is not a registered seqio task or mixture "
                     f"(known: {sorted(seqio.TaskRegistry.names())[:20]})") from e
  if split not in provider.splits:
    raise ValueError(f"data split {split!r} is not one of {list(provider.splits)} for task {name!r}")
  ds = provider.get_dataset(sequence_length=None, split=split, shuffle=False, use_cached=False)
  if limit:
    ds = ds.take(limit)
  return [ex["text"].decode("utf-8") for ex in ds.as_numpy_iterator()]
