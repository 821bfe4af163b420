"""The study's pre-registered analysis (docs/results/study/PROTOCOL.md): two rows of per-seed
APs compared by mean difference, pooled SD and Welch's t.

Pure Python plus scipy (for the t distribution); no training, no Detectron2.
"""
import math
import statistics
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Comparison:
    """``b`` against ``a`` (e.g. MGD-AMP against the baseline)."""

    n_a: int
    n_b: int
    mean_a: float
    mean_b: float
    sd_a: float  # sample SD (n - 1); 0 for one value
    sd_b: float
    difference: float  # mean_b - mean_a
    pooled_sd: float  # sqrt(((n_a-1) sd_a² + (n_b-1) sd_b²) / (n_a + n_b - 2)); nan below 3 values
    welch_t: Optional[float]  # None when both SDs are 0 or a row has one value
    welch_df: Optional[float]
    p_two_sided: Optional[float]

    @property
    def in_pooled_sds(self) -> Optional[float]:
        """The difference in pooled SDs (None when the pooled SD is 0 or undefined)."""
        if not self.pooled_sd or math.isnan(self.pooled_sd):
            return None
        return self.difference / self.pooled_sd


def compare(a: Sequence[float], b: Sequence[float]) -> Comparison:
    if not a or not b:
        raise ValueError("each row needs at least one value")
    n_a, n_b = len(a), len(b)
    mean_a, mean_b = statistics.mean(a), statistics.mean(b)
    sd_a = statistics.stdev(a) if n_a > 1 else 0.0
    sd_b = statistics.stdev(b) if n_b > 1 else 0.0
    dof = n_a + n_b - 2
    pooled = math.sqrt(((n_a - 1) * sd_a ** 2 + (n_b - 1) * sd_b ** 2) / dof) if dof > 0 else float("nan")
    t = df = p = None
    se2_a, se2_b = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    if n_a > 1 and n_b > 1 and se2_a + se2_b > 0:
        t = (mean_b - mean_a) / math.sqrt(se2_a + se2_b)
        df = (se2_a + se2_b) ** 2 / (se2_a ** 2 / (n_a - 1) + se2_b ** 2 / (n_b - 1))
        from scipy.stats import t as student_t

        p = float(2 * student_t.sf(abs(t), df))
    return Comparison(n_a, n_b, mean_a, mean_b, sd_a, sd_b, mean_b - mean_a, pooled, t, df, p)


def mean_sd_text(values: Sequence[float]) -> str:
    """"m ± sd" (sample SD) of several values, the value itself for one."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"
