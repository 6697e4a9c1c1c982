"""weightcast: RL weight broadcast with one-sided RDMA writes.

Controller (one per job), Sender (one per trainer rank) and Receiver (one per inference rank)
are the C++ library's classes (include/weightcast/api/weightcast.h); weightcast.torch reads a
trainer spec off a live torch model. Specs: docs/spec-format.md.
"""
from . import _native
from ._native import *  # noqa: F401,F403 - the public API is the native module's

__doc__ = __doc__ or _native.__doc__
__all__ = [n for n in dir(_native) if not n.startswith("_")]
