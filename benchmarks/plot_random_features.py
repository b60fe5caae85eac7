"""Plot accuracy against feature dimension from `benchmarks/random_features.jsonl`.

python -m benchmarks.random_features --section sweep
python -m benchmarks.plot_random_features        # writes docs/images/random_features.png
"""

import json
from collections import defaultdict
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


ROOT = Path(__file__).resolve().parent.parent


def main():
    rows = [json.loads(line) for line in (ROOT / "benchmarks/random_features.jsonl").open()]
    sweep = [r for r in rows if r["section"] == "sweep"]
    exact = [r["test_nmse"] for r in sweep if r["method"] == "exact (Cholesky)"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for method, marker in (("sampled", "o"), ("hermite", "s")):
        by_m = defaultdict(list)
        for r in sweep:
            if r["method"] == method:
                by_m[r["m"]].append(r)
        if not by_m:
            continue
        ms = np.array(sorted(by_m))
        for key, style in (("nngp_rel_err", "-"), ("ntk_rel_err", "--")):
            err = [np.mean([r[key] for r in by_m[m]]) for m in ms]
            left.loglog(ms, err, style + marker, label=f"{method}, {key.split('_')[0].upper()}")
        nmse = [np.mean([r["test_nmse"] for r in by_m[m]]) for m in ms]
        right.semilogx(ms, nmse, "-" + marker, label=f"random features ({method})")
    ms = np.array(sorted({r["m"] for r in sweep if "m" in r}))
    if len(ms):
        ref = 0.5 * np.sqrt(ms[0]) / np.sqrt(ms)
        left.loglog(ms, ref, ":", color="gray", label=r"$\propto m^{-1/2}$")
    if exact:
        right.axhline(exact[0], color="black", label="exact NTK (Cholesky)")
    left.set(
        xlabel="feature dimension m",
        ylabel="relative kernel error (Frobenius)",
        title="Kernel approximation",
    )
    right.set(
        xlabel="feature dimension m", ylabel="test NMSE", title="NTK regression, teacher task"
    )
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    out = ROOT / "docs/images/random_features.png"
    fig.savefig(out, dpi=90)
    print(out)


if __name__ == "__main__":
    main()
