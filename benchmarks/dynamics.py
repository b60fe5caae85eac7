"""Prediction with kernels: GP inference, closed-form MSE dynamics, ODE dynamics.

Both libraries get the same float32 kernel matrices: an RBF kernel of seeded points (positive
definite, well conditioned once regularised), so only the prediction code is timed.
- gp_inference: 4000 training points, 1000 test points, 10 outputs, with the test covariance.
- mse: `gradient_descent_mse`, 2000 training points, 500 test points, 10 outputs, 100 times.
- ode: `gradient_descent` with cross-entropy, 500 training points, 100 test points, 10 classes,
  50 times (both at their default tolerances, rtol = atol = 1.4e-8, and adaptive steps).
Each timed function builds the predictor and predicts, jitted as a whole.
"""

from ._harness import Case, Row, Target
from ._timing import measure


OUTPUTS = 10
DIAG_REG = 1e-2
LEARNING_RATE = 1.0
ODE_REPEATS = 51


def _sizes(name: str, quick: bool) -> tuple[int, int, int]:
    """(training points, test points, output times)."""
    full = {"gp_inference": (4000, 1000, 1), "mse": (2000, 500, 100), "ode": (500, 100, 50)}
    return (8, 4, 3) if quick else full[name]


def _problem(name: str, quick: bool):
    """Seeded kernels and targets as numpy float32: (k_train_train, k_test_train,
    k_test_test, y_train, times)."""
    import numpy as np

    n_train, n_test, n_times = _sizes(name, quick)
    rng = np.random.default_rng(0)
    dim = 16
    x = rng.standard_normal((n_train + n_test, dim))
    sq = np.sum(x**2, 1)
    distances = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)
    k = np.exp(-distances / (2 * dim)).astype(np.float32)
    labels = rng.integers(0, OUTPUTS, n_train)
    y = np.eye(OUTPUTS, dtype=np.float32)[labels]
    if name == "mse":
        y = y - 1 / OUTPUTS
    times = np.linspace(0, 10.0 if name == "ode" else 100.0, n_times, dtype=np.float32)
    tr, te = slice(0, n_train), slice(n_train, None)
    return k[tr, tr], k[te, tr], k[te, te], y, times


def _cross_entropy(fx, y):
    import jax
    import jax.numpy as jnp

    return -jnp.mean(jnp.sum(jax.nn.log_softmax(fx) * y, axis=-1))


def _measure_eqntk(name: str, quick: bool) -> dict:
    import equinox as eqx
    import jax.numpy as jnp

    from eqntk import dynamics

    k_tt, k_st, k_ss, y, times = map(jnp.asarray, _problem(name, quick))
    if name == "gp_inference":

        @eqx.filter_jit
        def run(k_tt, y, k_st, k_ss):
            predictor = dynamics.gp_inference(k_tt, y, diag_reg=DIAG_REG)
            return predictor(k_st, k_ss, get="nngp")

        return measure(run, k_tt, y, k_st, k_ss)
    if name == "mse":

        @eqx.filter_jit
        def run(k_tt, y, k_st, times):
            predictor = dynamics.gradient_descent_mse(k_tt, y, learning_rate=LEARNING_RATE)
            return predictor(times, 0.0, 0.0, k_st)

        return measure(run, k_tt, y, k_st, times)

    @eqx.filter_jit
    def run(k_tt, y, k_st, times):
        predictor = dynamics.gradient_descent(_cross_entropy, k_tt, y, LEARNING_RATE)
        return predictor(times, 0.0, 0.0, k_st)

    # A solve takes about 10 ms: many repeats, so that the median is not noise.
    return measure(run, k_tt, y, k_st, times, repeats=ODE_REPEATS)


def _measure_nt(name: str, quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from neural_tangents import predict

    k_tt, k_st, k_ss, y, times = map(jnp.asarray, _problem(name, quick))
    if name == "gp_inference":

        def run(k_tt, y, k_st, k_ss):
            predict_fn = predict.gp_inference(k_tt, y, diag_reg=DIAG_REG)
            return predict_fn("nngp", k_st, k_ss)

        return measure(jax.jit(run), k_tt, y, k_st, k_ss)
    if name == "mse":

        def run(k_tt, y, k_st, times):
            predict_fn = predict.gradient_descent_mse(k_tt, y, learning_rate=LEARNING_RATE)
            return predict_fn(times, 0.0, 0.0, k_st)

        return measure(jax.jit(run), k_tt, y, k_st, times)

    def run(k_tt, y, k_st, times):
        predict_fn = predict.gradient_descent(_cross_entropy, k_tt, y, LEARNING_RATE)
        return predict_fn(times, 0.0, 0.0, k_st)

    return measure(jax.jit(run), k_tt, y, k_st, times, repeats=ODE_REPEATS)


def eqntk_gp_inference(quick: bool) -> dict:
    return {"measurements": {"predict": _measure_eqntk("gp_inference", quick)}}


def nt_gp_inference(quick: bool) -> dict:
    return {"measurements": {"predict": _measure_nt("gp_inference", quick)}}


def eqntk_mse(quick: bool) -> dict:
    return {"measurements": {"predict": _measure_eqntk("mse", quick)}}


def nt_mse(quick: bool) -> dict:
    return {"measurements": {"predict": _measure_nt("mse", quick)}}


def eqntk_ode(quick: bool) -> dict:
    return {"measurements": {"predict": _measure_eqntk("ode", quick)}}


def nt_ode(quick: bool) -> dict:
    return {"measurements": {"predict": _measure_nt("ode", quick)}}


def _case(name: str, ratio: float, description: str) -> Case:
    target = Target(ratio=ratio, first=1.0, memory=True)
    rows = (Row(f"dynamics.{name}", "predict", "predict", target=target),)
    return Case(
        name=f"dynamics.{name}",
        module=__name__,
        eqntk=f"eqntk_{name}",
        nt=f"nt_{name}",
        rows=rows,
        description=description,
    )


CASES = (
    _case("gp_inference", 1.0, "gp_inference, 4000 train, 1000 test, 10 outputs, covariance"),
    _case("mse", 1.0, "gradient_descent_mse, 2000 train, 500 test, 10 outputs, 100 times"),
    _case("ode", 0.5, "gradient_descent, cross-entropy, 500 train, 100 test, 50 times"),
)
