"""The one central-difference oracle (derive.finite_differences) against derivatives known in
closed form: it must be right before it judges anything."""

import numpy as np

from symgrad.derive import finite_differences as fd


def test_elementwise_is_the_gradient_of_a_cubic_to_second_order_in_eps():
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    got = fd.elementwise(lambda z: float(np.sum(z ** 3)), x, 1e-4)
    np.testing.assert_allclose(got, 3 * x ** 2, rtol=0, atol=1e-7)  # error eps^2 * f''' / 6
    picked = fd.elementwise(lambda z: float(np.sum(z ** 3)), x, 1e-4, [(1, 0)])
    assert picked == [got[1, 0]]


def test_directional_of_a_gradient_is_a_hessian_vector_product_for_arrays_and_dicts():
    a = np.array([[2.0, 1.0], [1.0, 3.0]])
    x, v = np.array([0.3, -0.7]), np.array([1.0, 2.0])
    np.testing.assert_allclose(fd.directional(lambda z: a @ z, x, v, 1e-6), a @ v, rtol=1e-9)
    got = fd.directional(lambda d: {"g": d["x"] * d["y"]}, {"x": x, "y": 2 * x}, {"x": v}, 1e-6)
    np.testing.assert_allclose(got["g"], 2 * x * v, rtol=1e-8)  # y held: only x moves
