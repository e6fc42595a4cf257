from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import pyarrow as pa

PathLike = Union[str, Path]

class PowersynthError(Exception): ...

class Rng:
    """A seeded random stream (PCG64)."""
    def __init__(self, seed: int) -> None: ...

class LogisticModel:
    """y(x) = b0 + L·σ(k(x − x0)), x = log2(batch size)."""
    def __init__(self, L: float, x0: float, k: float, b0: float) -> None: ...
    @staticmethod
    def fit(x: Sequence[float], y: Sequence[float]) -> LogisticModel: ...
    @property
    def L(self) -> float: ...
    @property
    def x0(self) -> float: ...
    @property
    def k(self) -> float: ...
    @property
    def b0(self) -> float: ...
    def eval(self, batch: int) -> float: ...
    def eval_x(self, x: float) -> float: ...
    def deriv_wrt_x(self, x: float) -> float: ...
    def to_dict(self) -> Dict[str, float]: ...

class ITLMixtureModel:
    """ITL = loc + a two-component log-normal mixture (s)."""
    @staticmethod
    def fit(
        samples: Sequence[float],
        max_samples: Optional[int] = None,
        seed: int = 0,
        mode: str = "robust",
    ) -> ITLMixtureModel: ...
    def mean_var(self) -> Tuple[float, float]: ...
    def sample_one(self, rng: Rng) -> float: ...
    def sample_avg(self, n: int, rng: Rng) -> float: ...
    def quantile(self, q: float) -> float: ...
    def to_dict(self) -> Dict[str, float]: ...

def load_leaderboard(path: PathLike) -> pa.Table: ...
def synthesize(
    serving: Mapping[str, object],
    requests: PathLike,
    t0: float,
    duration_s: float,
    *,
    dt_s: float = 0.25,
    seed: int = 0,
    train: Optional[Iterable[PathLike]] = None,
    model: Optional[PathLike] = None,
    leaderboard: Optional[PathLike] = None,
    stand_in: Optional[Mapping[str, str]] = None,
    task: Optional[str] = None,
) -> pa.Table: ...
def synthesis_info(table: pa.Table) -> dict: ...
def run_scenario(
    path: PathLike,
    *,
    gpus: Optional[int] = None,
    duration_s: Optional[float] = None,
    seed: Optional[int] = None,
) -> Dict[str, pa.Table]: ...

def power_flow(
    feeder: PathLike,
    *,
    loads: Optional[Mapping[str, float]] = None,
    taps: Optional[Mapping[str, int]] = None,
    source_pu: Optional[float] = None,
    pf: float = 0.95,
    tolerance_pu: float = 1e-6,
) -> Dict[str, object]: ...
