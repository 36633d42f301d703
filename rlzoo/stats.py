"""Small statistics for ablation tables: t-based confidence intervals over seeds, and the CI of a
ratio of two means (compute of one recipe over another's)."""
from __future__ import annotations

import math

# Two-sided 95% Student-t quantiles t_{0.975, df} (standard tables).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120,
         17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064,
         25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042, 40: 2.021, 60: 2.000,
         120: 1.980}


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}; between tabulated values the next smaller df is used (a wider interval)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 120:
        return 1.960
    return _T975[max(k for k in _T975 if k <= df)]


def mean_ci(values: list[float]) -> tuple[float, float, int]:
    """(mean, half-width of the 95% t interval, n). Half-width is nan for n < 2:
    mean ± t_{0.975, n-1} · s / sqrt(n), s the sample standard deviation."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan, 1
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * s / math.sqrt(n), n


def ratio_ci(numerator: list[float], denominator: list[float]) -> tuple[float, float, float]:
    """(ratio of means, low, high) for independent samples, by the delta method on the log scale:
    se = sqrt( s_a²/(n_a·m_a²) + s_b²/(n_b·m_b²) ), CI = r · exp(± t_{0.975, min(n)-1} · se)."""
    (ma, _, na), (mb, _, nb) = mean_ci(numerator), mean_ci(denominator)
    if na == 0 or nb == 0 or mb == 0:
        return math.nan, math.nan, math.nan
    ratio = ma / mb
    if na < 2 or nb < 2:
        return ratio, math.nan, math.nan
    var_a = sum((v - ma) ** 2 for v in numerator) / (na - 1)
    var_b = sum((v - mb) ** 2 for v in denominator) / (nb - 1)
    se = math.sqrt(var_a / (na * ma**2) + var_b / (nb * mb**2))
    t = t_quantile_975(min(na, nb) - 1)
    return ratio, ratio * math.exp(-t * se), ratio * math.exp(t * se)


def difference_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean(a) − mean(b), half-width of its 95% interval) for independent samples:
    t_{0.975, min(n_a, n_b) − 1} · sqrt(s_a²/n_a + s_b²/n_b) (the conservative Welch degrees of freedom)."""
    (ma, _, na), (mb, _, nb) = mean_ci(a), mean_ci(b)
    if na == 0 or nb == 0:
        return math.nan, math.nan
    if na < 2 or nb < 2:
        return ma - mb, math.nan
    var_a = sum((v - ma) ** 2 for v in a) / (na - 1)
    var_b = sum((v - mb) ** 2 for v in b) / (nb - 1)
    return ma - mb, t_quantile_975(min(na, nb) - 1) * math.sqrt(var_a / na + var_b / nb)
