"""Test helper shared by the kernels' tests: verify the Triton modules that cross-lowering for CUDA builds.

`jax.jit(...).trace(...).lower(lowering_platforms=('cuda',))` runs the Pallas Triton lowering on a machine without a
GPU, but the module it builds is only serialised, not verified: a malformed one (an `scf.for` whose bounds have
different integer types, say) fails later, when the GPU plugin parses it. Wrapping the lowering entry point and
calling MLIR's verifier on each module catches those here.
"""

import contextlib


@contextlib.contextmanager
def verified_triton_modules():
  """Within the block, every Pallas Triton module built is verified; yields a dict with the number of modules
  built ('modules') and the verifier's messages for the failing ones ('errors')."""
  from jax._src.pallas.triton import pallas_call_registration as registration  # private: test use only

  lowering = registration.lowering
  original = lowering.lower_jaxpr_to_triton_module
  seen = {'modules': 0, 'errors': []}

  def checked(*args, **kwargs):
    result = original(*args, **kwargs)
    seen['modules'] += 1
    try:
      ok = result.module.operation.verify()
    except Exception as e:  # MLIR raises with the diagnostics attached
      seen['errors'].append(str(e))
    else:
      if not ok:
        seen['errors'].append('verify() returned False')
    return result

  lowering.lower_jaxpr_to_triton_module = checked
  try:
    yield seen
  finally:
    lowering.lower_jaxpr_to_triton_module = original
