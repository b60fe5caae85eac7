"""Cases, targets, the subprocess runner and the results table (standard library only)."""

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "BENCHMARK-RESULT "
# What an eqntk side raises when the feature it times has not been written yet.
NOT_AVAILABLE = (ImportError, AttributeError, NotImplementedError)


@dataclasses.dataclass(frozen=True)
class Target:
    """What a row must achieve: a time ratio to neural-tangents, an absolute time, or both.

    `memory=True` adds that eqntk's peak memory (above the baseline of the measurement's
    memory window, see `_timing.measure`) must not exceed neural-tangents'. `first` bounds the
    ratio of the first calls (trace, compile and run) to neural-tangents' first call.
    """

    ratio: float | None = None
    seconds: float | None = None
    memory: bool = False
    first: float | None = None

    def describe(self) -> str:
        parts = []
        if self.ratio is not None:
            parts.append(f"<={self.ratio:g}x")
        if self.seconds is not None:
            parts.append(f"<{self.seconds:g} s")
        if self.first is not None:
            parts.append(f"first<={self.first:g}x")
        if self.memory:
            parts.append("mem<=NT")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: an eqntk measurement against a neural-tangents one.

    `eqntk` and `nt` name entries of the two sides' measurement dicts; a tuple for `nt` means
    "the fastest of these" (e.g. the best neural-tangents implementation). `statistic` is
    `"median"` (steady state, compile excluded) or `"first_call"` (compile + run). `versus`
    names another eqntk measurement to compare with instead of neural-tangents (e.g. one
    device against eight).
    """

    name: str
    eqntk: str
    nt: str | tuple[str, ...] | None = None
    statistic: str = "median"
    target: Target | None = None
    versus: str | None = None


@dataclasses.dataclass(frozen=True)
class Case:
    """A benchmark: two side functions in `module`, each run in its own subprocess.

    Each side function takes `quick: bool` (tiny sizes, for the smoke test) and returns
    `{"measurements": {name: measure(...)}, "notes": [str, ...]}`.
    """

    name: str
    module: str
    eqntk: str
    nt: str | None
    rows: tuple[Row, ...]
    description: str
    timeout_s: float = 1800.0
    env: tuple[tuple[str, str], ...] = ()


def run_side(case: Case, side: str, python: str, quick: bool, timeout_s: float | None) -> dict:
    """Run one side of `case` in a fresh interpreter `python`; return its result dict."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.pop("JAX_ENABLE_X64", None)
    env.update(case.env)
    command = [python, "-m", "benchmarks._worker", side, case.name] + (["--quick"] if quick else [])
    try:
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s or case.timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"status": "error", "reason": f"timed out after {timeout_s or case.timeout_s} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
    return {"status": "error", "reason": f"exit status {done.returncode}:\n" + "\n".join(tail)}


def _seconds(t: float | None) -> str:
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.0f} us"
    if t < 1:
        return f"{t * 1e3:.1f} ms"
    return f"{t:.2f} s"


def _pick(result: dict | None, key: str | tuple[str, ...] | None, statistic: str) -> dict:
    """The measurement named `key` (the fastest by `statistic` when a tuple), or `{}`."""
    if result is None or key is None or result.get("status") != "ok":
        return {}
    keys = (key,) if isinstance(key, str) else key
    found = [result["measurements"].get(k, {}) for k in keys]
    found = [m for m in found if m.get(statistic) is not None]
    return min(found, key=lambda m: m[statistic]) if found else {}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def evaluate(row: Row, ours: dict, theirs: dict | None) -> dict:
    """The figures of one table row: times, ratios, first calls, memory and the verdict."""
    mine = _pick(ours, row.eqntk, row.statistic)
    if row.versus is not None:
        other = _pick(ours, row.versus, row.statistic)
    else:
        other = _pick(theirs, row.nt, row.statistic)
    t_ours, t_nt = mine.get(row.statistic), other.get(row.statistic)
    ratio = _ratio(t_ours, t_nt)
    cpu_key = "cpu_median" if row.statistic == "median" else "cpu_first"
    cpu_ratio = _ratio(mine.get(cpu_key), other.get(cpu_key))
    first_ours, first_nt = mine.get("first_call"), other.get("first_call")
    first_ratio = _ratio(first_ours, first_nt)
    first_cpu_ratio = _ratio(mine.get("cpu_first"), other.get("cpu_first"))

    def memory(result: dict | None, measurement: dict) -> float | None:
        # The measurement's own window when it has one, else the whole case's.
        if measurement.get("work_mib") is not None:
            return measurement["work_mib"]
        return result.get("work_mib") if result and result.get("status") == "ok" else None

    mem_ours = memory(ours, mine) if mine else None
    mem_nt = memory(ours if row.versus else theirs, other) if other else None
    verdict = "-"
    target = row.target
    if target is not None and t_ours is not None:
        checks = []
        if target.ratio is not None and (row.nt or row.versus) is not None:
            checks.append(None if ratio is None else ratio <= target.ratio)
        if target.seconds is not None:
            checks.append(t_ours < target.seconds)
        if target.first is not None:
            checks.append(None if first_ratio is None else first_ratio <= target.first)
        if target.memory:
            checks.append(None if mem_ours is None or mem_nt is None else mem_ours <= mem_nt)
        known = [c for c in checks if c is not None]
        if known:
            verdict = ("PASS" if all(known) else "FAIL") + (
                "" if len(known) == len(checks) else "?"
            )
    missing = None
    if t_ours is None and ours.get("status") == "ok":
        missing = ours["measurements"].get(row.eqntk, {}).get("not_available", "not measured")
        verdict = "n/a"
    return {
        "row": row.name,
        "missing": missing,
        "versus": row.versus,
        "statistic": row.statistic,
        "eqntk_s": t_ours,
        "compile_s": mine.get("compile"),
        "nt_s": t_nt,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "eqntk_first_s": first_ours,
        "nt_first_s": first_nt,
        "first_ratio": first_ratio,
        "first_cpu_ratio": first_cpu_ratio,
        "target": target.describe() if target else "",
        "verdict": verdict,
        "eqntk_mib": mem_ours,
        "nt_mib": mem_nt,
    }


_HEADER = (
    "case",
    "stat",
    "eqntk",
    "NT",
    "ratio",
    "cpu ratio",
    "eqntk first",
    "NT first",
    "first ratio",
    "first cpu",
    "target",
    "pass",
    "eqntk MiB",
    "NT MiB",
)


def table_lines(evaluations: Sequence[dict], unavailable: Sequence[tuple[str, str]]) -> list[str]:
    """Format evaluated rows (and cases that could not run) as a Markdown table."""

    def mib(m: float | None) -> str:
        return "-" if m is None else f"{m:.0f}"

    def times(r: float | None) -> str:
        return "-" if r is None else f"{r:.2f}x"

    rows = [_HEADER]
    for e in evaluations:
        rows.append(
            (
                e["row"],
                "first" if e["statistic"] == "first_call" else "median",
                "not available" if e["missing"] else _seconds(e["eqntk_s"]),
                _seconds(e["nt_s"]) + (f" (eqntk {e['versus']})" if e["versus"] else ""),
                times(e["ratio"]),
                times(e["cpu_ratio"]),
                _seconds(e["eqntk_first_s"]),
                _seconds(e["nt_first_s"]),
                times(e["first_ratio"]),
                times(e["first_cpu_ratio"]),
                e["target"] or "-",
                e["verdict"],
                mib(e["eqntk_mib"]),
                mib(e["nt_mib"]),
            )
        )
    for name, why in unavailable:
        rows.append((name, "", why) + ("",) * (len(_HEADER) - 3))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return lines


def run_cases(
    cases: Sequence[Case],
    *,
    compare_nt: bool,
    nt_python: str,
    quick: bool = False,
    timeout_s: float | None = None,
    log=print,
) -> dict:
    """Run every case (eqntk side, then neural-tangents side when asked); print as it goes."""
    evaluations, unavailable, raw = [], [], {}
    for case in cases:
        log(f"# {case.name}: {case.description}")
        ours = run_side(case, "eqntk", sys.executable, quick, timeout_s)
        theirs = None
        if ours["status"] == "ok" and compare_nt and case.nt is not None:
            theirs = run_side(case, "nt", nt_python, quick, timeout_s)
            if theirs["status"] != "ok":
                log(f"  neural-tangents side failed: {theirs.get('reason')}")
        raw[case.name] = {"eqntk": ours, "nt": theirs}
        if ours["status"] != "ok":
            reason = ours.get("reason", "").strip().splitlines()
            why = "not available" if ours["status"] == "not available" else "error"
            log(f"  eqntk: {why}: " + (reason[-1] if reason else ""))
            if why == "error":
                log("\n".join("    " + line for line in reason))
            unavailable.append((case.name, why))
            continue
        for note in ours.get("notes", []) + (theirs or {}).get("notes", []):
            log(f"  {note}")
        for row in case.rows:
            evaluations.append(evaluate(row, ours, theirs))
    return {"evaluations": evaluations, "unavailable": unavailable, "raw": raw}
