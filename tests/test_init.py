"""npfcn.init.orthogonal: orthonormal convolution weights."""
import numpy as np
import pytest

from npfcn.init import orthogonal


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (256, 32, 7, 7), (16, 16, 1, 1),
                                   (64, 3, 1, 1), (5, 1, 2, 2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_orthogonal_weights_are_orthonormal_rows_or_columns(shape, dtype):
    weights = orthogonal(shape, np.random.default_rng(0), dtype)
    assert weights.shape == shape and weights.dtype == dtype
    matrix = weights.reshape(shape[0], -1).astype(np.float64)
    out, fan_in = matrix.shape
    # Rows orthonormal when there are no more rows than columns, columns otherwise.
    gram = matrix @ matrix.T if out <= fan_in else matrix.T @ matrix
    # float32 rounding of entries of size ~1/sqrt(n): each Gram entry off by ~1e-7*sqrt(n)
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(gram, np.eye(min(out, fan_in)), atol=tolerance)


def test_orthogonal_is_deterministic_per_generator_and_differs_between_seeds():
    a = orthogonal((8, 4, 3, 3), np.random.default_rng(1))
    np.testing.assert_array_equal(a, orthogonal((8, 4, 3, 3), np.random.default_rng(1)))
    assert not np.allclose(a, orthogonal((8, 4, 3, 3), np.random.default_rng(2)))


def test_orthogonal_is_not_biased_by_the_qr_sign_convention():
    # Without moving R's signs into Q, LAPACK's Householder QR makes the first column of
    # Q lean one way (here: its first entry is never positive).  A uniformly drawn
    # orthogonal matrix has every entry symmetric about 0: over 400 draws the first
    # entry is positive in 200 +- 10 (one standard deviation), so 140-260 is ~6 sigma wide.
    rng = np.random.default_rng(0)
    positive = sum(orthogonal((3, 3, 1, 1), rng, np.float64)[0, 0, 0, 0] > 0 for _ in range(400))
    assert 140 < positive < 260


def test_orthogonal_refuses_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="float32 or float64"):
        orthogonal((4, 3, 3, 3), rng, np.int32)
    with pytest.raises(ValueError, match="positive sizes"):
        orthogonal((4, 0, 3, 3), rng)
    with pytest.raises(ValueError, match="positive sizes"):
        orthogonal((4,), rng)
