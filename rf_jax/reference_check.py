"""Former home of the parity harness, kept as names only: the side-by-side harness in shared/bench/torch_ref (which
this repository cannot change) imports `ReferenceFolder` from here. Everything lives in `rf_jax.reference`."""

from rf_jax.reference import Comparison, ReferenceFolder, check_reference

__all__ = ["Comparison", "ReferenceFolder", "check_reference"]
