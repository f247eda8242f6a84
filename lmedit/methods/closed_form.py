"""Closed-form weight updates of the locate-then-edit family, as pure functions over tensors.

Nothing here touches a model. Every function takes plain tensors, does its algebra in `dtype`
(float64 by default) on the device of its inputs, and returns the update in that dtype; callers
cast the result back to the model's dtype. Inverses are never formed: each update is a linear
solve.

Notation (a linear map y = W k, W of shape (d_out, d_in)):
  C   (d_in, d_in)  second moment E[k kᵀ] of keys the edit should preserve (scaled by the caller)
  k*  (d_in,)       key of one edited fact;  v* (d_out,) the value it should map to
  K   (d_in, n)     keys of n facts edited together (one column each)
  R   (d_out, n)    residuals: what each key's output must gain, V - W K (or a share of it)

Updates (all return ΔW of shape (d_out, d_in)):
  rome_update       ΔW = (v* − W k*) (C⁻¹u)ᵀ / (k*ᵀ C⁻¹ u),  u = k* by default
                    (W + ΔW) k* = v* exactly; among all such ΔW it has least ‖ΔW‖ in the norm
                    induced by C (tr ΔW C ΔWᵀ), so any x with xᵀC⁻¹k* = 0 is untouched.
  memit_update      ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, the minimiser of ‖ΔW K − R‖² + λ tr(ΔW C ΔWᵀ)
  emmet_update      ΔW = R (Kᵀ C⁻¹ K + εI)⁻¹ Kᵀ C⁻¹: with ε = 0 the least-C-norm ΔW that meets
                    ΔW K = R exactly (the batched, equality-constrained form of ROME)
  nullspace_projector / alphaedit_update
                    P = U Uᵀ over eigenvectors of C with small eigenvalues (the approximate null
                    space of preserved keys); ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + αI)⁻¹, which has
                    ΔW k0 = 0 for every k0 with P k0 = 0 (preserved knowledge untouched).
  nullspace_basis / alphaedit_update_in_basis
                    the same update computed in the r-dimensional null-space basis U (r < d_in),
                    with the earlier edits summarised by their r×r Gram matrix: cost independent of
                    how many edits came before (what sequential AlphaEdit uses).
  spread_residual   MEMIT's (÷(L−l+1)) and PMET's (÷√(L−l+1)) split of a target shift over layers.
"""
from __future__ import annotations

import math

import torch

Tensor = torch.Tensor


def _as(x: Tensor, dtype: torch.dtype, device=None) -> Tensor:
    return x.detach().to(device=device if device is not None else x.device, dtype=dtype)


def _sym_solve(A: Tensor, B: Tensor) -> Tensor:
    """Solve A X = B for symmetric positive-definite A (Cholesky), falling back to LU if A is not PD."""
    L, info = torch.linalg.cholesky_ex(A)
    if int(info) == 0:
        return torch.cholesky_solve(B, L)
    return torch.linalg.solve(A, B)


def rome_update(W: Tensor, C: Tensor, k: Tensor, v: Tensor, direction_key: Tensor | None = None,
                dtype: torch.dtype = torch.float64) -> Tensor:
    """ROME's rank-one update (Meng et al. 2022, eq. 2).

    W (d_out, d_in), C (d_in, d_in) symmetric positive definite, k (d_in,), v (d_out,).
    Returns ΔW = (v − W k) uᵀC⁻¹ / (kᵀ C⁻¹ u) with u = `direction_key` (default k), so that
    (W + ΔW) k = v exactly. With u = k this is the C-norm-minimal update inserting k -> v.
    `direction_key` exists for original ROME, whose implementation builds the direction C⁻¹u from the
    prefix-averaged key but inserts the key of the bare prompt; R-ROME uses one key for both.
    Any x with xᵀ C⁻¹ u = 0 is mapped as before (ΔW x = 0).
    """
    dev = W.device
    W, C, k, v = (_as(t, dtype, dev) for t in (W, C, k, v))
    u = k if direction_key is None else _as(direction_key, dtype, dev)
    cinv_u = _sym_solve(C, u.unsqueeze(1)).squeeze(1)  # C⁻¹u, (d_in,)
    denom = k @ cinv_u
    if not torch.isfinite(denom) or denom.abs() < torch.finfo(dtype).tiny:
        raise ValueError("ROME update is degenerate: kᵀC⁻¹u is zero or not finite")
    return torch.outer(v - W @ k, cinv_u) / denom


def memit_update(K: Tensor, R: Tensor, C: Tensor, lam: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """MEMIT's batched least-squares update (Meng et al. 2023, eq. 14).

    K (d_in, n), R (d_out, n), C (d_in, d_in). Returns ΔW = R Kᵀ (λC + K Kᵀ)⁻¹, the minimiser of
    ‖ΔW K − R‖²_F + λ tr(ΔW C ΔWᵀ); it satisfies the normal equations ΔW (λC + K Kᵀ) = R Kᵀ.
    Computed as the solve (λC + KKᵀ) ΔWᵀ = K Rᵀ (the matrix is symmetric).
    """
    dev = K.device
    K, R, C = (_as(t, dtype, dev) for t in (K, R, C))
    A = lam * C + K @ K.T
    return _sym_solve(A, K @ R.T).T


def emmet_update(K: Tensor, R: Tensor, C: Tensor, ridge: float = 0.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """EMMET's equality-constrained batched update (Gupta et al. 2024, "A unified framework for model editing").

    K (d_in, n), R (d_out, n), C (d_in, d_in) positive definite. Solves
        min_ΔW tr(ΔW C ΔWᵀ)  subject to  ΔW K = R
    whose solution is ΔW = R (Kᵀ C⁻¹ K)⁻¹ Kᵀ C⁻¹ (n = 1 gives ROME). For conditioning, `ridge` ε adds
    ε·mean(diag(KᵀC⁻¹K))·I to the n×n matrix (relative, so independent of the scale of C); with
    ε = 0 the constraints hold exactly, with ε > 0 approximately. Scaling C by λ does not change ΔW.
    """
    dev = K.device
    K, R, C = (_as(t, dtype, dev) for t in (K, R, C))
    cinv_k = _sym_solve(C, K)  # C⁻¹K, (d_in, n)
    M = K.T @ cinv_k  # (n, n)
    if ridge > 0:
        M = M + ridge * M.diagonal().mean() * torch.eye(M.shape[0], dtype=dtype, device=dev)
    # ΔW = R M⁻¹ (C⁻¹K)ᵀ ; M symmetric
    return _sym_solve(M, R.T).T @ cinv_k.T


def nullspace_basis(C: Tensor, threshold: float, relative: bool = False,
                    dtype: torch.dtype = torch.float64) -> Tensor:
    """U (d_in, r): orthonormal eigenvectors of C (symmetric PSD, d_in × d_in) whose eigenvalue is
    below `threshold` (times the largest eigenvalue when `relative`): the approximate null space of
    the preserved keys (Fang et al. 2025, sec. 3.2)."""
    C = _as(C, dtype)
    C = 0.5 * (C + C.T)
    s, Q = torch.linalg.eigh(C)
    cut = threshold * s.max() if relative else threshold
    return Q[:, s < cut]


def nullspace_projector(C: Tensor, threshold: float, relative: bool = False,
                        dtype: torch.dtype = torch.float64) -> Tensor:
    """AlphaEdit's null-space projector P = U Uᵀ (d_in, d_in), U = `nullspace_basis(C, ...)`.

    The orthogonal projector onto the approximate null space of the preserved keys (second moment
    C = K0 K0ᵀ up to scale), so ‖P K0‖ is small and P k = 0 exactly for k in the span of the
    large-eigenvalue directions.
    """
    U = nullspace_basis(C, threshold, relative, dtype)
    return U @ U.T


def alphaedit_update(K: Tensor, R: Tensor, P: Tensor, K_prev: Tensor | None = None, alpha: float = 1.0,
                     dtype: torch.dtype = torch.float64) -> Tensor:
    """AlphaEdit's null-space-constrained update (Fang et al. 2025, eq. 14).

    K (d_in, n) keys of this edit, R (d_out, n) residuals, P (d_in, d_in) null-space projector,
    K_prev (d_in, m) keys of earlier sequential edits (or None). Returns
        ΔW = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + αI)⁻¹
    the minimiser over ΔW = Δ̃P of ‖ΔW K − R‖² + ‖ΔW K_p‖² + α‖ΔW‖². Because the rows of ΔW lie in
    range(P), ΔW k0 = 0 for any k0 with P k0 = 0. Computed as the solve
    (P M + αI) ΔWᵀ = P K Rᵀ with M = K Kᵀ + K_p K_pᵀ (the transpose of the matrix above).
    """
    dev = K.device
    K, R, P = (_as(t, dtype, dev) for t in (K, R, P))
    M = K @ K.T
    if K_prev is not None and K_prev.numel():
        Kp = _as(K_prev, dtype, dev)
        M = M + Kp @ Kp.T
    A = P @ M + alpha * torch.eye(P.shape[0], dtype=dtype, device=dev)
    return torch.linalg.solve(A, P @ K @ R.T).T


def alphaedit_update_in_basis(K: Tensor, R: Tensor, U: Tensor, prev_gram: Tensor | None = None,
                              alpha: float = 1.0, dtype: torch.dtype = torch.float64) -> Tensor:
    """`alphaedit_update` with P = U Uᵀ, computed in the null-space basis.

    K (d_in, n), R (d_out, n), U (d_in, r) orthonormal columns, prev_gram (r, r) = Σ (UᵀK_p)(UᵀK_p)ᵀ
    over the earlier edits' keys (or None). Every admissible update is ΔW = Δ̂ Uᵀ, and minimising
    ‖Δ̂ UᵀK − R‖² + ‖Δ̂ UᵀK_p‖² + α‖Δ̂‖² gives
        ΔW = R (UᵀK)ᵀ (G_p + (UᵀK)(UᵀK)ᵀ + αI)⁻¹ Uᵀ,
    which satisfies ΔW (M P + αI) = R Kᵀ P, i.e. equals the paper's form. The r×r system is
    symmetric positive definite (Cholesky), and the earlier edits enter only through G_p.
    """
    dev = K.device
    K, R, U = (_as(t, dtype, dev) for t in (K, R, U))
    Kr = U.T @ K  # (r, n)
    A = Kr @ Kr.T + alpha * torch.eye(U.shape[1], dtype=dtype, device=dev)
    if prev_gram is not None:
        A = A + _as(prev_gram, dtype, dev)
    Y = _sym_solve(A, Kr)  # (r, n) = A⁻¹ UᵀK
    return R @ (U @ Y).T


def spread_residual(target_shift: Tensor, layer_pos: int, n_layers: int, rule: str = "linear") -> Tensor:
    """The share of a still-missing target shift that the edit layer at position `layer_pos` takes.

    Layers l_0 < ... < l_{n-1} = L are edited in order; before editing layer l_i the caller recomputes
    `target_shift` = z − h_L (the shift still missing at the last layer, after earlier layers' updates).
    MEMIT ("linear"): share = shift / (L − l_i + 1) counted in edit layers, i.e. / (n − i);
    PMET ("sqrt"): share = shift / sqrt(n − i) (its square-root spread).
    """
    if not 0 <= layer_pos < n_layers:
        raise ValueError(f"layer_pos {layer_pos} out of range for {n_layers} layers")
    remaining = n_layers - layer_pos
    if rule == "linear":
        return target_shift / remaining
    if rule == "sqrt":
        return target_shift / math.sqrt(remaining)
    raise ValueError(f"unknown spread rule {rule!r}; use 'linear' or 'sqrt'")
