"""Empirical (finite-width) NTK: every implementation of both libraries, and eqntk's "auto".

- fcn: 784 -> 3 x (Dense 512, ReLU) -> 10, 32 x 32 inputs.
- cnn: 4 x (Conv 3x3 SAME, 64 channels, ReLU) + Flatten + Dense 10 on 3x16x16, 32 x 32 inputs.
The eqntk models are plain `equinox.nn` modules (`empirical_kernel` takes any Equinox model);
the neural-tangents ones are the same architectures in `stax`. The output axis is traced
(an N1 x N2 kernel), as neural-tangents does by default. The target: eqntk's "auto" at most the
time of the fastest neural-tangents implementation.
"""

from ._data import channel_last, normal
from ._harness import Case, Row, Target
from ._timing import measure


# eqntk's implementation names, and neural-tangents' `NtkImplementation` values, in one order.
IMPLEMENTATIONS = {
    "jacobian_contraction": 1,
    "ntk_vector_products": 2,
    "structured_derivatives": 3,
}
OUTPUTS = 10


def _sizes(name: str, quick: bool) -> tuple[int, tuple[int, ...], int, int]:
    """(examples per side, per-example input shape (channel-first), width, timing repeats)."""
    if name == "fcn":
        return (2, (8,), 8, 1) if quick else (32, (784,), 512, 7)
    return (2, (3, 4, 4), 4, 1) if quick else (32, (3, 16, 16), 64, 3)


def _eqntk_model(name: str, shape: tuple[int, ...], width: int, key):
    import equinox as eqx
    import jax
    import jax.random as jr

    if name == "fcn":
        return eqx.nn.MLP(shape[0], OUTPUTS, width, depth=3, activation=jax.nn.relu, key=key)
    keys = jr.split(key, 5)
    convs = [
        eqx.nn.Conv2d(shape[0] if i == 0 else width, width, 3, padding="SAME", key=keys[i])
        for i in range(4)
    ]
    layers = []
    for conv in convs:
        layers += [conv, eqx.nn.Lambda(jax.nn.relu)]
    flat = width * shape[1] * shape[2]
    layers += [eqx.nn.Lambda(jax.numpy.ravel), eqx.nn.Linear(flat, OUTPUTS, key=keys[4])]
    return eqx.nn.Sequential(layers)


def _nt_model(name: str, width: int):
    from neural_tangents import stax

    if name == "fcn":
        layers = [stax.Dense(width), stax.Relu()] * 3
    else:
        layers = [stax.Conv(width, (3, 3), padding="SAME"), stax.Relu()] * 4 + [stax.Flatten()]
    return stax.serial(*layers, stax.Dense(OUTPUTS))


def _eqntk_side(name: str, quick: bool) -> dict:
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr

    from eqntk.empirical import empirical_kernel

    n, shape, width, repeats = _sizes(name, quick)
    x1, x2 = jnp.asarray(normal((n, *shape), 0)), jnp.asarray(normal((n, *shape), 1))
    model = _eqntk_model(name, shape, width, jr.key(0))
    m = {}
    for implementation in (*IMPLEMENTATIONS, "auto"):

        @eqx.filter_jit
        def ntk(model, x1, x2, implementation=implementation):
            return empirical_kernel(
                model, x1, x2, get="ntk", implementation=implementation, trace_axes=(-1,)
            )

        m[implementation] = measure(ntk, model, x1, x2, repeats=repeats)
    return {"measurements": m}


def _nt_side(name: str, quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import neural_tangents as nt

    n, shape, width, repeats = _sizes(name, quick)
    x1 = jnp.asarray(channel_last(normal((n, *shape), 0)))
    x2 = jnp.asarray(channel_last(normal((n, *shape), 1)))
    init_fn, apply_fn, _ = _nt_model(name, width)
    _, params = init_fn(jax.random.PRNGKey(0), x1.shape)
    m = {}
    for implementation, value in IMPLEMENTATIONS.items():
        ntk_fn = nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=value)
        m[implementation] = measure(jax.jit(ntk_fn), x1, x2, params, repeats=repeats)
    return {"measurements": m}


def eqntk_fcn(quick: bool) -> dict:
    return _eqntk_side("fcn", quick)


def nt_fcn(quick: bool) -> dict:
    return _nt_side("fcn", quick)


def eqntk_cnn(quick: bool) -> dict:
    return _eqntk_side("cnn", quick)


def nt_cnn(quick: bool) -> dict:
    return _nt_side("cnn", quick)


def _case(name: str, description: str) -> Case:
    rows = tuple(Row(f"empirical.{name}: {impl}", impl, impl) for impl in IMPLEMENTATIONS)
    rows += (
        Row(
            f"empirical.{name}: auto",
            "auto",
            tuple(IMPLEMENTATIONS),
            target=Target(ratio=1.0, first=1.0),
        ),
    )
    return Case(
        name=f"empirical.{name}",
        module=__name__,
        eqntk=f"eqntk_{name}",
        nt=f"nt_{name}",
        rows=rows,
        description=description,
        timeout_s=3600.0,
    )


CASES = (
    _case("fcn", "empirical NTK, FCN 784 -> 3 x 512 -> 10, 32 x 32, every implementation"),
    _case("cnn", "empirical NTK, 4 x (Conv 3x3 64, ReLU) + Dense 10 on 3x16x16, 32 x 32"),
)
