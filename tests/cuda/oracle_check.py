"""The check every emulated CUDA kernel test makes of an op's output: x's dtype, the oracle's
shape, x's memory format kept, and the relative error to the float64 oracle within
tests/numerics.py's bound for the dtype, naming the launch that ran."""
import numerics
from fastdw.contract import output_memory_format


def assert_matches_oracle(y, ref, x, launch):
    assert y.dtype == x.dtype and y.shape == ref.shape, (y.dtype, y.shape, ref.shape)
    assert y.is_contiguous(memory_format=output_memory_format(x))
    err = numerics.rel_err(y, ref)
    assert err < numerics.REL_TOL[x.dtype], f"relative error {err:.3g} for {x.dtype} ({launch})"
