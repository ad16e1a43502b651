"""Low-rank approximation of linear layers: plain SVD, activation-aware SVD, and AA + residual.

A linear layer computes ``y = x Wᵀ + b`` with W of shape (out × in). Every method returns a
:class:`LowRankLinear` of rank r — two dense matmuls (in × r) and (r × out), so the exported
graph (and TVM) sees the smaller shapes; its ``r · (in + out)`` weights are the layer's budget.

``svd`` — Eckart–Young: the rank-r truncated SVD of W, minimising ‖W − Ŵ‖_F.

``aa`` — activation-aware (arXiv 2402.06004): minimise ‖X Wᵀ − X Ŵᵀ‖_F over calibration
inputs X (rows = tokens). With G = XᵀX + λ·mean(diag G)·I = L Lᵀ (Cholesky; λ = ``damping``
keeps a rank-deficient X solvable), ‖X Δᵀ‖_F = ‖Δ L‖_F, so the optimum is Ŵ = [W L]_r L⁻¹ where
[·]_r is the rank-r truncated SVD (U_r Σ_r V_rᵀ). Factors: ``second = U_r Σ_r^½``,
``first = Σ_r^½ V_rᵀ L⁻¹``, each rank-1 component rescaled so both sides have equal norm (which
keeps both factors well conditioned for quantization).

``aa-residual`` — the paper's *sum of two parameter-efficient terms with error compensation*:
Ŵ = P + R where P is the ``aa`` principal term of rank r_p and R = C D a compact residual term
of rank r_res = round(``residual_share`` · r) (0 when r = 1), r_p + r_res = r, so the budget is
the same as a rank-r layer. R starts as the next r_res whitened components (so P + R starts at
the rank-r ``aa`` solution) and is then fitted, with the bias, by layer-wise error compensation:
Adam on the layer's output loss

    ℓ(C, D, b) = ‖X̃ (P + C D)ᵀ + b − (X_ref Wᵀ + b₀)‖²_F / ‖X_ref Wᵀ + b₀‖²_F

where X̃ are the inputs the layer receives in the *compressed* model (upstream layers already
approximated) and X_ref those it receives in the model before low-rank. The gradient therefore
compensates the error accumulated upstream, not only this layer's own truncation. P stays
fixed (it is the closed-form optimum; training it from there lands in shallow minima). ℓ is
quadratic in (C D, b), so the gradients are exact and computed from the Gram matrix of X̃
(cost independent of the number of calibration tokens); the refinement keeps the best parameters seen, so ℓ never ends above its starting value.

``refine_solver = "als"`` (the default since stop 47; ``adam`` before) fits the same ℓ by
alternating least squares: with D fixed, ℓ is a least-squares problem in (C, b), solved
exactly through an (r_res + 1)² system; with C and b fixed, one in D, solved through the
Cholesky factor of X̃ᵀX̃ + λI (factored once per layer), λ = ``damping`` · mean(diag X̃ᵀX̃) as
in the whitening. No step size is involved; ``refine_steps`` counts sweeps (both half-steps),
stopping early once a sweep gains less than 1e-6 of ℓ, and the best (C, D, b) seen is kept.
The damping matters once the layer is quantized: undamped (a ridge of 1e-9), two mixed
DeiT-Small candidates (int8/w8a8, pruning) ended with output feature errors of 1.28 and 0.96
against 0.549 and 0.650 unrefined, each at one of three sweep counts (10, 25, 50) and not at
the others: an ill-conditioned solve whose factors int8 rounding sometimes destroys (not
reproduced on small synthetic layers). Damped, the same candidates end at 0.549 and 0.651 at
every sweep count, every layer's ℓ 22–25 % lower on average.
Measured (random-init timm models at 224 px, 64 calibration images; ``bench/solvers.py``, commands
in the README's recipe section): on DeiT-B (greedy ranks at 40 % of the parameters; ``bench/recipe.py``) 50 Adam
steps at the default step size improved on the starting point of none of the 48 layers; 50 ALS
sweeps lowered every layer's ℓ (by 10 % on average, 19 % at most) and the model's output
feature error from 0.071 to 0.053. On DeiT-Small, low-rank only (two random rank menus of the
scale bench's space, 25 and 31 layers): 50 Adam steps changed nothing (no layer below its
start), damped ALS lowered the held-out logit error 0.0347 → 0.0280 and 0.0405 → 0.0258 and took
20–21 s a candidate against 30–31 s; on the default digits model (uniform rank 0.25/0.5, fp32
and int8) the two solvers' accuracies are equal, ALS 1.1 s a candidate against 3.0–3.5 s.

P and R are merged into one rank-r pair ([P_second R_second], [P_first; R_first]), so the deployed
layer is two matmuls, like the other methods.
"""

from __future__ import annotations

import torch
from torch import nn

from vitune.compression.methods import CompressionMethods
from vitune.compression.modules import LowRankLinear
from vitune.errors import ConfigError

def _check(layer: nn.Module, rank: int, where: str) -> tuple[int, int]:
    if not isinstance(layer, nn.Linear):
        raise ConfigError(f"{where}: low-rank needs a plain nn.Linear, found {type(layer).__name__}")
    out_f, in_f = layer.weight.shape
    if not 1 <= rank <= min(out_f, in_f):
        raise ConfigError(f"{where}: rank {rank} is impossible for a {out_f}x{in_f} layer (1..{min(out_f, in_f)})")
    return out_f, in_f


def _module(first_w: torch.Tensor, second_w: torch.Tensor, bias: torch.Tensor | None, dtype) -> LowRankLinear:
    # balance every rank-1 component: ‖first row i‖ = ‖second column i‖
    n1 = first_w.norm(dim=1).clamp(min=1e-30)
    n2 = second_w.norm(dim=0).clamp(min=1e-30)
    c = (n2 / n1).sqrt()
    first_w, second_w = first_w * c[:, None], second_w / c[None, :]
    rank, in_f = first_w.shape
    # no random init: every parameter is overwritten below (kaiming init took ~0.2 s a DeiT-B candidate)
    first = nn.utils.skip_init(nn.Linear, in_f, rank, bias=False)
    second = nn.utils.skip_init(nn.Linear, rank, second_w.shape[0], bias=bias is not None)
    with torch.no_grad():
        first.weight.copy_(first_w.to(dtype))
        second.weight.copy_(second_w.to(dtype))
        if bias is not None:
            second.bias.copy_(bias.to(dtype))
    return LowRankLinear(first, second)


def factorize(layer: nn.Linear, rank: int, where: str = "linear") -> LowRankLinear:
    """Plain truncated SVD of W (float64); exactly low-rank W is recovered up to rounding."""
    _check(layer, rank, where)
    w = layer.weight.detach().to(torch.float64)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    bias = None if layer.bias is None else layer.bias.detach()
    return _module(root[:, None] * vh[:rank], u[:, :rank] * root[None, :], bias, layer.weight.dtype)


def factorize_shapes(layer: nn.Linear, rank: int, where: str = "linear") -> LowRankLinear:
    """A rank-``rank`` factorization with :func:`factorize`'s shapes and dtype whose factors are
    slices of W (finite, not fitted): what a build, its tuning and its latency need, for none of
    the SVD's cost (a DeiT-B candidate's SVDs took ~12 s). Never for accuracy."""
    _check(layer, rank, where)
    w = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    return _module(w[:rank, :].clone(), w[:, :rank].clone(), bias, layer.weight.dtype)


def damped_cholesky(g: torch.Tensor, share: float, what: str) -> torch.Tensor:
    """The Cholesky factor of g + λI, λ = ``share`` · mean(diag g), λ raised tenfold (up to 8
    times) until the factorisation succeeds; ``what`` names the caller in the error."""
    eye = torch.eye(g.shape[0], dtype=g.dtype)
    lam = share * float(g.diagonal().mean().clamp(min=1e-30))
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(g + lam * eye)
        if int(info) == 0:
            return chol
        lam *= 10.0
    raise ConfigError(f"{what}: the calibration Gram matrix is not positive definite")


class WhitenedSVD:
    """The SVD of W L (L Lᵀ = damped XᵀX): ``u``, ``s`` and ``right = Vᵀ L⁻¹`` (float64).

    ``s²`` splits the layer's output energy ‖X Wᵀ‖² by component, so
    :meth:`relative_error` gives the output error of every rank without recomputing anything.
    """

    def __init__(self, weight: torch.Tensor, gram: torch.Tensor, damping: float):
        w = weight.detach().to(torch.float64)
        chol = self.chol = damped_cholesky(gram.to(torch.float64), damping, "activation-aware SVD")
        u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
        # Vᵀ L⁻¹ = (L⁻ᵀ V)ᵀ: one triangular solve
        right = torch.linalg.solve_triangular(chol.T, vh.T, upper=True).T
        self.u, self.s, self.right = u, s, right

    def factors(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        root = self.s[start:stop].sqrt()
        return root[:, None] * self.right[start:stop], self.u[:, start:stop] * root[None, :]

    def relative_error(self, rank: int) -> float:
        """‖X(W − Ŵ_r)ᵀ‖ / ‖X Wᵀ‖ in the damped metric, for the rank-r ``aa`` solution."""
        e = self.s.pow(2)
        return float((e[rank:].sum() / e.sum().clamp(min=1e-300)).sqrt())


def gram(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x.T @ x


def factorize_aa(layer: nn.Linear, rank: int, x: torch.Tensor, damping: float = 1e-3, where: str = "linear") -> LowRankLinear:
    """Activation-aware rank-``rank`` approximation for calibration inputs ``x`` (rows × in)."""
    _check(layer, rank, where)
    svd = WhitenedSVD(layer.weight, gram(x), damping)
    first, second = svd.factors(0, rank)
    bias = None if layer.bias is None else layer.bias.detach()
    return _module(first, second, bias, layer.weight.dtype)


def factorize_aa_residual(
    layer: nn.Linear,
    rank: int,
    x: torch.Tensor,
    x_ref: torch.Tensor,
    methods: CompressionMethods = CompressionMethods(),
    where: str = "linear",
) -> tuple[LowRankLinear, dict]:
    """Principal ``aa`` term + residual term refined by error compensation (see the module doc).

    ``x``: the layer's inputs in the compressed model; ``x_ref``: the same rows' inputs in the
    model before low-rank. Returns the module and ``{"loss_start", "loss_end", "residual_rank"}``.
    """
    _check(layer, rank, where)
    if x.shape != x_ref.shape:
        raise ValueError(f"{where}: x {tuple(x.shape)} and x_ref {tuple(x_ref.shape)} differ")
    f32, f64 = torch.float32, torch.float64
    # Products over the calibration rows (N = images × tokens: 12,608 on DeiT at 224 px with 64
    # images) in float32, their small results (Gram matrices, sums) kept in float64: 2-3x faster
    # than float64 throughout, with rounding of the order of 1e-6 of ‖Y‖².
    xs, xr = x.to(f32), x_ref.to(f32)
    a = torch.cat([xs, torch.ones(xs.shape[0], 1, dtype=f32)], dim=1)
    g = (a.T @ a).to(f64)  # [X̃, 1]ᵀ[X̃, 1]: X̃ᵀX̃ (the whitening's Gram matrix) is its top-left block
    svd = WhitenedSVD(layer.weight, g[:-1, :-1], methods.damping)
    r_res = int(round(methods.residual_share * rank)) if rank > 1 else 0
    r_p = rank - r_res
    p_first, p_second = svd.factors(0, r_p)
    c_first, c_second = svd.factors(r_p, rank)
    b0 = torch.zeros(layer.out_features, dtype=f64) if layer.bias is None else layer.bias.detach().to(f64)

    # The loss is quadratic in Θ = [Dᵀ Cᵀ; bᵀ]: with A = [X̃, 1] and T = X_ref Wᵀ + b₀ − X̃ Pᵀ,
    # ℓ = (⟨Θ, GΘ⟩ − 2⟨Θ, H⟩ + ‖T‖²) / ‖Y‖², G = AᵀA, H = AᵀT, ∂ℓ/∂Θ = 2(GΘ − H) / ‖Y‖².
    # GΘ = (G_x Dᵀ) Cᵀ + G_1 bᵀ, so each Adam step costs O(in² · r_res + in · r_res · out) on
    # small matrices, whatever the number of tokens.
    w = layer.weight.detach()
    y = xr @ w.T.to(f32) + b0.to(f32)
    t = y - (xs @ p_first.T.to(f32)) @ p_second.T.to(f32)
    h = (a.T @ t).to(f64)
    tt, yy = float(t.pow(2).sum()), float(y.pow(2).sum()) or 1e-30  # (torch sums float32 pairwise)
    y_rms = max((yy / y.numel()) ** 0.5, 1e-12)
    del a, y, t
    g_x, g_1 = g[:, :-1], g[:, -1:]

    d, c, b = c_first.clone(), c_second.clone(), b0.clone()  # D: r_res × in, C: out × r_res

    def loss_and_grads():
        top = (c @ d).T if r_res else torch.zeros(w.shape[1], w.shape[0], dtype=f64)
        theta = torch.cat([top, b[None, :]])
        g_theta = g_1 @ b[None, :] + ((g_x @ d.T) @ c.T if r_res else 0)
        loss = (float((theta * g_theta).sum()) - 2 * float((theta * h).sum()) + tt) / yy
        gam = 2 * (g_theta - h) / yy
        top = gam[:-1]
        return loss, (top @ c).T, top.T @ d.T, gam[-1]

    def rms(v):
        return float(v.pow(2).mean().sqrt().clamp(min=1e-12))

    if methods.refine_solver == "als":
        d_best, c_best, b_best, start, end = _als(g, h, tt, yy, d, c, b, methods.refine_steps, methods.damping)
    else:
        params = [b] + ([d, c] if r_res else [])
        lrs = [methods.refine_lr * y_rms] + ([methods.refine_lr * rms(d), methods.refine_lr * rms(c)] if r_res else [])
        m1 = [torch.zeros_like(p) for p in params]
        m2 = [torch.zeros_like(p) for p in params]
        beta1, beta2, eps = 0.9, 0.999, 1e-12
        start, best = None, (float("inf"), None)
        for step in range(methods.refine_steps + 1):
            loss, grad_d, grad_c, grad_b = loss_and_grads()
            start = loss if start is None else start
            if loss < best[0]:
                best = (loss, (d.clone(), c.clone(), b.clone()))
            if step == methods.refine_steps:
                break
            grads = [grad_b] + ([grad_d, grad_c] if r_res else [])
            for i, (p, grad) in enumerate(zip(params, grads)):  # Adam, in place
                m1[i].mul_(beta1).add_(grad, alpha=1 - beta1)
                m2[i].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                hat1 = m1[i] / (1 - beta1 ** (step + 1))
                hat2 = m2[i] / (1 - beta2 ** (step + 1))
                p.sub_(lrs[i] * hat1 / (hat2.sqrt() + eps))
        end, (d_best, c_best, b_best) = best
    first = torch.cat([p_first, d_best]) if r_res else p_first
    second = torch.cat([p_second, c_best], dim=1) if r_res else p_second
    bias = b_best if (layer.bias is not None or methods.refine_steps) else None
    module = _module(first, second, bias, layer.weight.dtype)
    return module, {"loss_start": start, "loss_end": end, "residual_rank": r_res}


def output_error(layer: nn.Module, approx: nn.Module, x: torch.Tensor) -> float:
    """‖X Wᵀ − X Ŵᵀ‖_F / ‖X Wᵀ‖_F (biases excluded) for calibration inputs ``x``."""
    with torch.no_grad():
        x = x.to(torch.float32)
        ref = layer(x) - (0 if getattr(layer, "bias", None) is None else layer.bias)
        bias = getattr(getattr(approx, "second", approx), "bias", None)
        got = approx(x) - (0 if bias is None else bias)
        return float((ref - got).norm() / ref.norm().clamp(min=1e-30))


def _als(g, h, tt: float, yy: float, d, c, b, sweeps: int, damping: float = 1e-9, tol: float = 1e-6):
    """Alternating least squares on ℓ (see the module doc), from (D, C, b); returns the best
    (D, C, b) seen with ℓ at the start and at the end.

    ``g`` = AᵀA and ``h`` = AᵀT with A = [X̃, 1] (float64). With E = blockdiag(D, 1) and
    Z = [Cᵀ; bᵀ], Θ = EᵀZ, so ℓ·‖Y‖² = ⟨Z, (E G Eᵀ) Z⟩ − 2⟨Z, E H⟩ + ‖T‖²: the (C, b) step solves
    (E G Eᵀ) Z = E H, and ℓ is read from the same small products. The D step solves
    G_xx Dᵀ (CᵀC) = (H_x − G_x1 bᵀ) C through G_xx's Cholesky factor. A sweep costs one G Eᵀ
    product, O(in² · r), where an Adam step costs O(in² · out). Sweeps stop once one gains less
    than ``tol`` of ℓ. A ridge of 1e-9 of the mean diagonal keeps both solves possible when the
    calibration inputs or the factors are rank-deficient (for the Cholesky factor, raised tenfold
    until it succeeds: the float32 rounding of a singular Gram matrix can leave it slightly
    indefinite)."""
    n_in = g.shape[0] - 1
    r = d.shape[0]

    def ridge(m):
        return m + 1e-9 * float(m.diagonal().mean().clamp(min=1e-30)) * torch.eye(m.shape[0], dtype=m.dtype)

    def products(d):
        e = torch.zeros(r + 1, n_in + 1, dtype=g.dtype)
        e[:r, :n_in], e[r, n_in] = d, 1.0
        return e @ (g @ e.T), e @ h

    def loss(z, ege, eh):
        return (float((z * (ege @ z)).sum()) - 2 * float((z * eh).sum()) + tt) / yy

    chol = damped_cholesky(g[:n_in, :n_in], damping, "error compensation (als)") if r else None
    ege, eh = products(d)
    start = loss(torch.cat([c.T, b[None, :]]), ege, eh)
    best = (start, d, c, b)
    for _ in range(sweeps):
        z = torch.linalg.solve(ridge(ege), eh)  # (r + 1) × out: the best (C, b) for this D
        c, b = z[:r].T.contiguous(), z[r].clone()
        after_c = loss(z, ege, eh)
        if after_c < best[0]:
            best = (after_c, d, c, b)
        if not r:
            break  # the bias alone: one exact solve
        m = h[:n_in] - g[:n_in, n_in:] @ b[None, :]  # in × out
        d = torch.cholesky_solve(m @ c @ torch.linalg.inv(ridge(c.T @ c)), chol).T.contiguous()  # the best D for (C, b)
        ege, eh = products(d)
        now = loss(z, ege, eh)
        gained = best[0] - now
        if now < best[0]:
            best = (now, d, c, b)
        if gained < tol * max(best[0], 1e-30):
            break
    return best[1], best[2], best[3], start, best[0]
