"""The closed-form updates on random matrices, in float64."""
import pytest
import torch

from lmedit.methods import closed_form as cf

D_OUT, D_IN = 12, 9
TOL = 1e-8


def _spd(d, gen, scale=1.0):
    A = torch.randn(d, 3 * d, generator=gen, dtype=torch.float64)
    return scale * (A @ A.T) / (3 * d) + 1e-3 * torch.eye(d, dtype=torch.float64)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def test_rome_inserts_key_value_exactly_and_is_c_minimal(gen):
    W = torch.randn(D_OUT, D_IN, generator=gen, dtype=torch.float64)
    C = _spd(D_IN, gen)
    k, v = torch.randn(D_IN, generator=gen, dtype=torch.float64), torch.randn(D_OUT, generator=gen, dtype=torch.float64)
    dW = cf.rome_update(W, C, k, v)
    assert dW.shape == W.shape
    assert torch.allclose((W + dW) @ k, v, atol=TOL, rtol=0)
    # rank one, and directions C-orthogonal to k (xᵀC⁻¹k = 0) are untouched
    assert torch.linalg.matrix_rank(dW) == 1
    cinv_k = torch.linalg.solve(C, k)
    x = torch.randn(D_IN, generator=gen, dtype=torch.float64)
    x = x - (x @ cinv_k) / (cinv_k @ cinv_k) * cinv_k
    assert abs(float(x @ cinv_k)) < 1e-12
    assert torch.allclose(dW @ x, torch.zeros(D_OUT, dtype=torch.float64), atol=TOL, rtol=0)
    # C-norm minimal: adding any feasible perturbation E (E k = 0) does not decrease tr(ΔW C ΔWᵀ)
    E = torch.randn(D_OUT, D_IN, generator=gen, dtype=torch.float64)
    E = E - torch.outer(E @ k, k) / (k @ k)
    cost = lambda M: torch.trace(M @ C @ M.T)  # noqa: E731
    assert cost(dW) <= cost(dW + 1e-3 * E) + 1e-12
    # equals the explicit formula with an inverse
    ref = torch.outer(v - W @ k, torch.linalg.inv(C) @ k) / (k @ torch.linalg.inv(C) @ k)
    assert torch.allclose(dW, ref, atol=TOL, rtol=0)


def test_rome_with_separate_direction_key_still_inserts_the_key(gen):
    W = torch.randn(D_OUT, D_IN, generator=gen, dtype=torch.float64)
    C = _spd(D_IN, gen)
    k, u = torch.randn(D_IN, generator=gen, dtype=torch.float64), torch.randn(D_IN, generator=gen, dtype=torch.float64)
    v = torch.randn(D_OUT, generator=gen, dtype=torch.float64)
    dW = cf.rome_update(W, C, k, v, direction_key=u)
    assert torch.allclose((W + dW) @ k, v, atol=TOL, rtol=0)


def test_rome_float32_inputs_are_computed_in_float64(gen):
    W = torch.randn(D_OUT, D_IN, generator=gen).float()
    C = _spd(D_IN, gen).float()
    k, v = torch.randn(D_IN, generator=gen), torch.randn(D_OUT, generator=gen)
    dW = cf.rome_update(W, C, k, v)
    assert dW.dtype == torch.float64
    assert torch.allclose((W.double() + dW) @ k.double(), v.double(), atol=TOL, rtol=0)


def test_memit_solves_the_normal_equations(gen):
    n, lam = 5, 3.0
    K = torch.randn(D_IN, n, generator=gen, dtype=torch.float64)
    R = torch.randn(D_OUT, n, generator=gen, dtype=torch.float64)
    C = _spd(D_IN, gen)
    dW = cf.memit_update(K, R, C, lam)
    lhs = dW @ (lam * C + K @ K.T)
    assert torch.allclose(lhs, R @ K.T, atol=TOL, rtol=0)
    # gradient of ‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ) vanishes
    grad = (dW @ K - R) @ K.T + lam * dW @ C
    assert grad.abs().max() < TOL


def test_emmet_satisfies_constraints_exactly(gen):
    n = 4
    K = torch.randn(D_IN, n, generator=gen, dtype=torch.float64)
    R = torch.randn(D_OUT, n, generator=gen, dtype=torch.float64)
    C = _spd(D_IN, gen)
    dW = cf.emmet_update(K, R, C, ridge=0.0)
    assert torch.allclose(dW @ K, R, atol=TOL, rtol=0)
    # C-norm minimal among feasible updates: adding E with E K = 0 costs more
    E = torch.randn(D_OUT, D_IN, generator=gen, dtype=torch.float64)
    E = E - E @ K @ torch.linalg.solve(K.T @ K, K.T)
    assert (E @ K).abs().max() < 1e-10
    cost = lambda M: torch.trace(M @ C @ M.T)  # noqa: E731
    assert cost(dW) <= cost(dW + 1e-3 * E) + 1e-12
    # scaling C changes nothing; n = 1 is ROME
    assert torch.allclose(cf.emmet_update(K, R, 7.0 * C), dW, atol=TOL, rtol=0)
    W = torch.randn(D_OUT, D_IN, generator=gen, dtype=torch.float64)
    k, v = K[:, 0], torch.randn(D_OUT, generator=gen, dtype=torch.float64)
    assert torch.allclose(cf.emmet_update(k[:, None], (v - W @ k)[:, None], C), cf.rome_update(W, C, k, v), atol=TOL, rtol=0)
    # a small ridge keeps the constraints approximately
    dWr = cf.emmet_update(K, R, C, ridge=1e-6)
    assert (dWr @ K - R).abs().max() < 1e-4


def test_alphaedit_preserves_the_preserved_subspace(gen):
    # preserved keys span a 6-dimensional subspace of a 9-dimensional key space
    basis = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=gen, dtype=torch.float64))[0]
    big, small = basis[:, :6], basis[:, 6:]
    K0 = big @ torch.randn(6, 200, generator=gen, dtype=torch.float64)
    C = K0 @ K0.T / 200
    P = cf.nullspace_projector(C, threshold=1e-6)
    assert torch.allclose(P @ P, P, atol=TOL, rtol=0) and torch.allclose(P, P.T, atol=TOL, rtol=0)
    assert torch.allclose(P, small @ small.T, atol=TOL, rtol=0)
    n = 3
    K = torch.randn(D_IN, n, generator=gen, dtype=torch.float64)
    Kp = torch.randn(D_IN, 2, generator=gen, dtype=torch.float64)
    R = torch.randn(D_OUT, n, generator=gen, dtype=torch.float64)
    dW = cf.alphaedit_update(K, R, P, K_prev=Kp, alpha=1.0)
    k0 = big @ torch.randn(6, 5, generator=gen, dtype=torch.float64)
    assert (dW @ k0).abs().max() < TOL
    # it is the closed form of the paper: ΔW = R Kᵀ P (Kp Kpᵀ P + K Kᵀ P + I)⁻¹
    ref = R @ K.T @ P @ torch.linalg.inv(Kp @ Kp.T @ P + K @ K.T @ P + torch.eye(D_IN, dtype=torch.float64))
    assert torch.allclose(dW, ref, atol=TOL, rtol=0)
    # relative threshold selects the same subspace here
    assert torch.allclose(cf.nullspace_projector(C, 1e-8, relative=True), P, atol=TOL, rtol=0)


def test_alphaedit_in_the_nullspace_basis_equals_the_projector_form(gen):
    # a 4-dimensional null space; earlier edits summarised by their Gram matrix in that basis
    basis = torch.linalg.qr(torch.randn(D_IN, D_IN, generator=gen, dtype=torch.float64))[0]
    C = basis[:, :5] @ torch.diag(torch.linspace(1.0, 2.0, 5, dtype=torch.float64)) @ basis[:, :5].T
    U = cf.nullspace_basis(C, threshold=1e-6)
    assert U.shape == (D_IN, D_IN - 5) and torch.allclose(U.T @ U, torch.eye(D_IN - 5, dtype=torch.float64), atol=TOL)
    K = torch.randn(D_IN, 3, generator=gen, dtype=torch.float64)
    Kp = torch.randn(D_IN, 4, generator=gen, dtype=torch.float64)
    R = torch.randn(D_OUT, 3, generator=gen, dtype=torch.float64)
    ref = cf.alphaedit_update(K, R, U @ U.T, K_prev=Kp, alpha=0.5)
    gram = (U.T @ Kp) @ (U.T @ Kp).T
    assert torch.allclose(cf.alphaedit_update_in_basis(K, R, U, gram, alpha=0.5), ref, atol=TOL, rtol=0)
    assert torch.allclose(cf.alphaedit_update_in_basis(K, R, U, None, alpha=0.5),
                          cf.alphaedit_update(K, R, U @ U.T, alpha=0.5), atol=TOL, rtol=0)


def test_alphaedit_with_full_nullspace_fits_edits_as_ridge(gen):
    # P = I (nothing to preserve) and alpha -> 0 fits the residuals exactly when n <= d_in
    K = torch.randn(D_IN, 3, generator=gen, dtype=torch.float64)
    R = torch.randn(D_OUT, 3, generator=gen, dtype=torch.float64)
    dW = cf.alphaedit_update(K, R, torch.eye(D_IN, dtype=torch.float64), alpha=1e-10)
    assert (dW @ K - R).abs().max() < 1e-6


def test_spread_residual():
    shift = torch.ones(4)
    assert torch.allclose(cf.spread_residual(shift, 0, 4), shift / 4)
    assert torch.allclose(cf.spread_residual(shift, 3, 4), shift)
    assert torch.allclose(cf.spread_residual(shift, 0, 4, "sqrt"), shift / 2)
    with pytest.raises(ValueError):
        cf.spread_residual(shift, 4, 4)
    with pytest.raises(ValueError):
        cf.spread_residual(shift, 0, 4, "cubic")
