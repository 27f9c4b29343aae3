"""Differential privacy layer: integer noise samplers, accounting and DP helpers."""

from secagg.dp.samplers import bernoulli_exp, discrete_gaussian, discrete_laplace, skellam

__all__ = ["bernoulli_exp", "discrete_gaussian", "discrete_laplace", "skellam"]
