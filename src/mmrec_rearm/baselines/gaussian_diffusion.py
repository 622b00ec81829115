"""DiffMM's modality-aware graph diffusion (Jiang et al., ACM MM 2024, Sec. 3.2): a Gaussian
diffusion over users' interaction rows and the MLP denoiser that reverses it.

* :class:`GaussianDiffusion` — the schedule (eq. 4-6): ``beta_t`` from a linear variance schedule
  ``noise_scale * [noise_min, noise_max]`` with ``beta_0 = 1e-4``; forward noising ``q(x_t | x_0)``
  (eq. 5), the ``x_0``-predicting reverse mean (eq. 7-9), the SNR-weighted ELBO term (eq. 10-12)
  and the modality-aware graph condition loss (eq. 13, ``||x_hat_0 F_m - x_0 E_item||^2``);
* :class:`Denoiser` — ``x_t`` (b, n_items) plus a sinusoidal step embedding -> MLP (tanh) ->
  ``x_hat_0`` (b, n_items).

As in the authors' code, the schedule is computed in float64 and its coefficients are applied in
float32, and the SNR weight of the loss stays in float64.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["GaussianDiffusion", "Denoiser", "step_embedding"]


def step_embedding(steps: torch.Tensor, size: int) -> torch.Tensor:
    """Sinusoidal embedding of diffusion steps (b,) -> (b, size) float32: ``[cos(t f), sin(t f)]``
    with ``f_j = 10000^(-j / (size // 2))``, zero-padded when ``size`` is odd."""
    half = size // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=steps.device) / half)
    angles = steps[:, None].float() * freqs[None]
    out = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if size % 2:
        out = torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1)
    return out


class Denoiser(nn.Module):
    """``x_hat_0 = MLP([dropout(x_t) || W_t emb(t) + b_t])``: hidden ``dims`` with tanh, output
    ``n_items`` without activation. ``norm``: L2-normalise ``x_t`` rows first. Initialisation
    (authors'): weights ``N(0, sqrt(2 / (fan_in + fan_out)))``, biases ``N(0, 0.001)``."""

    def __init__(self, n_items: int, dims: Sequence[int], step_size: int, norm: bool = False,
                 dropout: float = 0.5):
        super().__init__()
        self.step_size, self.norm, self.dropout = int(step_size), bool(norm), float(dropout)
        self.step_proj = nn.Linear(self.step_size, self.step_size)
        widths_in = [n_items + self.step_size] + list(dims)
        widths_out = list(dims)[::-1] + [n_items]
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths_in[:-1], widths_in[1:]))
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths_out[:-1], widths_out[1:]))
        for layer in [self.step_proj, *self.encoder, *self.decoder]:
            fan_out, fan_in = layer.weight.shape
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0 / (fan_in + fan_out)))
            nn.init.normal_(layer.bias, 0.0, 0.001)

    def forward(self, x: torch.Tensor, steps: torch.Tensor, dropout: bool = True) -> torch.Tensor:
        """``x`` (b, n_items), ``steps`` (b,) -> (b, n_items). ``dropout``: drop input entries
        (training of the denoiser only; the reverse process never drops, whatever the mode)."""
        emb = self.step_proj(step_embedding(steps, self.step_size).to(self.step_proj.weight.dtype))
        if self.norm:
            x = F.normalize(x)
        if dropout:
            x = F.dropout(x, self.dropout, training=True)
        h = torch.cat([x, emb], dim=-1)
        for layer in self.encoder:
            h = torch.tanh(layer(h))
        for i, layer in enumerate(self.decoder):
            h = layer(h)
            if i < len(self.decoder) - 1:
                h = torch.tanh(h)
        return h


class GaussianDiffusion:
    """The noise schedule and the diffusion losses / sampling; holds no parameters."""

    def __init__(self, noise_scale: float, noise_min: float, noise_max: float, steps: int,
                 device: torch.device | str = "cpu"):
        if noise_scale <= 0 or steps < 1:
            raise ConfigError(f"DiffMM diffusion needs noise_scale > 0 and diffusion_steps >= 1, got "
                              f"noise_scale={noise_scale}, diffusion_steps={steps}.")
        self.steps = int(steps)
        variance = np.linspace(noise_scale * noise_min, noise_scale * noise_max, self.steps, dtype=np.float64)
        alpha_bar = 1.0 - variance
        betas = np.empty(self.steps, dtype=np.float64)
        betas[0] = 1.0 - alpha_bar[0]
        betas[1:] = np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], 0.999)
        betas[0] = 1e-4  # the authors fix the first step's beta
        cumprod = np.cumprod(1.0 - betas)
        previous = np.concatenate([[1.0], cumprod[:-1]])
        as_tensor = lambda a: torch.tensor(a, dtype=torch.float64, device=device)  # noqa: E731
        self.alphas_cumprod = as_tensor(cumprod)
        self.sqrt_alphas_cumprod = as_tensor(np.sqrt(cumprod))
        self.sqrt_one_minus_alphas_cumprod = as_tensor(np.sqrt(1.0 - cumprod))
        self.posterior_mean_coef1 = as_tensor(betas * np.sqrt(previous) / (1.0 - cumprod))
        self.posterior_mean_coef2 = as_tensor((1.0 - previous) * np.sqrt(1.0 - betas) / (1.0 - cumprod))
        variance_post = betas * (1.0 - previous) / (1.0 - cumprod)
        self.posterior_log_variance = as_tensor(np.log(np.concatenate([variance_post[1:2], variance_post[1:]])))

    @staticmethod
    def _at(coefficients: torch.Tensor, steps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Per-row coefficients (b, 1), float32 as in the authors' code, on ``like``'s device."""
        return coefficients.to(like.device)[steps].float().unsqueeze(-1)

    def q_sample(self, x0: torch.Tensor, steps: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Eq. 5: ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``."""
        if noise is None:
            noise = torch.randn_like(x0)
        return self._at(self.sqrt_alphas_cumprod, steps, x0) * x0 + \
            self._at(self.sqrt_one_minus_alphas_cumprod, steps, x0) * noise

    def snr(self, steps: torch.Tensor) -> torch.Tensor:
        """``abar_t / (1 - abar_t)`` (float64); index -1 wraps to the last step, as in the authors'."""
        a = self.alphas_cumprod.to(steps.device)[steps]
        return a / (1 - a)

    def training_losses(self, model: Denoiser, x0: torch.Tensor, item_embeddings: torch.Tensor,
                        modal_features: torch.Tensor, steps: Optional[torch.Tensor] = None,
                        noise: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-row (b,) ELBO term (eq. 10-12, SNR-weighted MSE, float64) and graph-condition loss
        (eq. 13, mean over the d embedding columns) for users' interaction rows ``x0`` (b, n_items).

        Random draws, in the authors' order: ``steps`` ~ U{0..T-1} (b,), then ``noise`` ~ N(0, 1)
        like ``x0``, then the denoiser's input dropout; pass ``steps`` / ``noise`` to fix them."""
        if steps is None:
            steps = torch.randint(0, self.steps, (x0.shape[0],), device=x0.device)
        if noise is None:
            noise = torch.randn_like(x0)
        predicted = model(self.q_sample(x0, steps, noise), steps)
        mse = ((x0 - predicted) ** 2).mean(dim=-1)
        weight = torch.where(steps == 0, torch.ones_like(self.snr(steps)), self.snr(steps - 1) - self.snr(steps))
        condition = ((predicted @ modal_features - x0 @ item_embeddings) ** 2).mean(dim=-1)
        return weight * mse, condition

    @torch.no_grad()
    def p_sample(self, model: Denoiser, x0: torch.Tensor, sampling_steps: int = 0,
                 sampling_noise: bool = False) -> torch.Tensor:
        """Reverse process over all T steps from ``x0`` noised to step ``sampling_steps - 1``
        (``0``: from ``x0`` itself); the mean only unless ``sampling_noise`` -> (b, n_items)."""
        if sampling_steps == 0:
            x = x0
        else:
            x = self.q_sample(x0, torch.full((x0.shape[0],), sampling_steps - 1, device=x0.device, dtype=torch.long))
        for i in reversed(range(self.steps)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            mean = self._at(self.posterior_mean_coef1, t, x) * model(x, t, dropout=False) + \
                self._at(self.posterior_mean_coef2, t, x) * x
            if sampling_noise:  # drawn at every step (the authors' order), not added at t = 0
                noise = torch.randn_like(x)
                if i > 0:
                    mean = mean + torch.exp(0.5 * self._at(self.posterior_log_variance, t, x)) * noise
            x = mean
        return x
