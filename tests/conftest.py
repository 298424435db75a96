"""Shared test configuration: hypothesis profiles and the optional PyTorch peer.

Profiles (all derived from hypothesis' own ones):

* ``npfcn-ci``  - built on hypothesis' ``ci`` profile (derandomised, no
  deadline), loaded when ``CI`` is set, as in CI.
* ``npfcn-dev`` - the default locally: random examples, no deadline (the
  float64 numerical gradients make single examples take tens of ms).
* ``npfcn-thorough`` - many more examples, for a long hunt:
  ``HYPOTHESIS_PROFILE=npfcn-thorough pytest``.

Example counts stay modest because every gradient check costs two forward
passes per input element; the whole suite must stay within a few minutes on
two cores.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "npfcn-ci", parent=settings.get_profile("ci"), max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "npfcn-dev", deadline=None, max_examples=25,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("npfcn-thorough", parent=settings.get_profile("npfcn-dev"),
                          max_examples=500)

_default = "npfcn-ci" if os.environ.get("CI") else "npfcn-dev"
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", _default))


@pytest.fixture
def torch():
    """The PyTorch module, or a clean skip where it is not installed."""
    return pytest.importorskip("torch")


@pytest.fixture(params=["c", "numpy"])
def each_backend(request):
    """Run a test once on the C kernel and once on the NumPy reference path."""
    from npfcn.kernels import backend
    if request.param == "c" and not backend.c_available():
        pytest.skip("C kernel not built")
    with backend.using(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
