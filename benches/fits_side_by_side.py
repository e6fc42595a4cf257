#!/usr/bin/env python3
"""Fit speed, powersynth against the peer (mlenergy-data 0.4.0), on the same inputs.

- ITL mixture EM on 100,000 samples drawn from one shifted two-log-normal mixture (no cap):
  the peer's `ITLMixtureModel.fit` (80 EM iterations) against powersynth's `compatible` mode
  (the same algorithm) and its default `robust` mode;
- the logistic fit on 8 points (x = log2 batch 8…1024): the peer's `LogisticModel.fit`
  (40 × 60 grid) against powersynth's default fit (the same grid + Nelder–Mead refinement).

powersynth is timed through its Python package (the call crosses PyO3 once; the samples are
passed as a list), so both sides pay the same interpreter overhead. `cargo bench --bench fits`
gives the Rust-side criterion figures.

Run in a scratch virtualenv with `pip install mlenergy-data==0.4.0 numpy` and the powersynth
wheel (`maturin build --release -m python/Cargo.toml`, then `pip install` the wheel):

    /path/to/venv/bin/python benches/fits_side_by_side.py [--repeat 7]

Prints one JSON object: per fit, the best and median wall time of each tool and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def timed(fn, repeat):
    times = []
    out = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def summary(ours, peer):
    return {
        "powersynth_best_s": min(ours),
        "powersynth_median_s": statistics.median(ours),
        "peer_best_s": min(peer),
        "peer_median_s": statistics.median(peer),
        "speedup_best": min(peer) / min(ours),
        "speedup_median": statistics.median(peer) / statistics.median(ours),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--samples", type=int, default=100_000)
    args = ap.parse_args()

    from mlenergy.data.modeling import ITLMixtureModel, LogisticModel
    import powersynth

    truth = ITLMixtureModel(
        loc=0.004, pi_steady=0.85, sigma_steady=0.15, scale_steady=0.006,
        pi_stall=0.15, sigma_stall=0.35, scale_stall=0.04,
    )
    rng = np.random.default_rng(1)
    samples = np.array([truth.sample_one(rng) for _ in range(args.samples)])
    as_list = samples.tolist()

    _, peer_em = timed(lambda: ITLMixtureModel.fit(samples), args.repeat)
    _, ours_compat = timed(lambda: powersynth.ITLMixtureModel.fit(as_list, mode="compatible"), args.repeat)
    _, ours_robust = timed(lambda: powersynth.ITLMixtureModel.fit(as_list), args.repeat)

    xb = np.log2(np.array([8, 16, 32, 64, 128, 256, 512, 1024], dtype=float))
    y = np.array([300.0, 320.0, 360.0, 430.0, 520.0, 590.0, 625.0, 640.0])
    _, peer_logistic = timed(lambda: LogisticModel.fit(xb, y), args.repeat)
    xl, yl = xb.tolist(), y.tolist()
    _, ours_logistic = timed(lambda: powersynth.LogisticModel.fit(xl, yl), args.repeat)

    print(json.dumps({
        "itl_em_100k_compatible": summary(ours_compat, peer_em),
        "itl_em_100k_robust_default": summary(ours_robust, peer_em),
        "logistic_8_points_default": summary(ours_logistic, peer_logistic),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
