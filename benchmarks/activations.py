"""Cost per kernel entry of one nonlinearity's kernel map: ReLU, Erf, numerical `Elementwise`.

Each map continues from the kernel of a Dense layer (computed once, outside the timing), so only
the nonlinearity is timed: NNGP and NTK in, NNGP and NTK out, on 10^7 entries (2500 x 4000).
The numerical map runs Gauss-Hermite quadrature of degree 25 per entry (neural-tangents
materialises every quadrature point), so it is timed on 10^5 entries and compared per entry.
A plain copy of a 10^7-entry array is the memory-bound limit: a map that reads NNGP and NTK and
writes both moves twice what a copy does.
"""

import inspect

from ._data import normal
from ._harness import Case, Row, Target
from ._timing import measure, optional


W_STD, B_STD = 1.5, 0.05
DIM = 16
QUADRATURE_DEGREE = 25


def _pairs(quick: bool) -> dict[str, tuple[int, int]]:
    if quick:
        return {"closed": (8, 16), "numerical": (4, 8)}
    return {"closed": (2500, 4000), "numerical": (250, 400)}


def _eqntk_elementwise(fn):
    from eqntk import nn

    parameters = inspect.signature(nn.Elementwise).parameters
    degree = [name for name in parameters if "deg" in name]
    kwargs = {degree[0]: QUADRATURE_DEGREE} if degree else {}
    return nn.Elementwise(fn, **kwargs)


def eqntk_side(quick: bool) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import jax.random as jr

    import eqntk
    from eqntk import nn

    dense = nn.Dense(DIM, DIM, W_std=W_STD, b_std=B_STD, key=jr.key(0))
    kernels = {}
    for size, (n1, n2) in _pairs(quick).items():
        x1, x2 = jnp.asarray(normal((n1, DIM), 0)), jnp.asarray(normal((n2, DIM), 1))
        kernels[size] = eqx.filter_jit(eqntk.limit(dense))(x1, x2)

    def time_map(layer, size):
        kernel_fn = eqx.filter_jit(eqntk.limit(layer))
        return measure(kernel_fn, kernels[size], get=("nngp", "ntk"))

    m = {
        "relu": time_map(nn.Relu(), "closed"),
        "erf": time_map(nn.Erf(), "closed"),
        "elementwise": optional(lambda: time_map(_eqntk_elementwise(jnp.tanh), "numerical")),
        "copy": measure(jax.jit(lambda a: a * 2), kernels["closed"].nngp),
    }
    return {"measurements": m, "notes": _notes(m, quick)}


def nt_side(quick: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from neural_tangents import stax

    _, _, dense_fn = stax.Dense(DIM, W_std=W_STD, b_std=B_STD)
    kernels = {}
    for size, (n1, n2) in _pairs(quick).items():
        x1, x2 = jnp.asarray(normal((n1, DIM), 0)), jnp.asarray(normal((n2, DIM), 1))
        kernels[size] = jax.jit(dense_fn)(x1, x2)

    def time_map(layer, size):
        kernel_fn = jax.jit(layer[2], static_argnames="get")
        return measure(kernel_fn, kernels[size], get=("nngp", "ntk"))

    m = {
        "relu": time_map(stax.Relu(), "closed"),
        "erf": time_map(stax.Erf(), "closed"),
        "elementwise": time_map(
            stax.ElementwiseNumerical(jnp.tanh, deg=QUADRATURE_DEGREE), "numerical"
        ),
    }
    return {"measurements": m, "notes": _notes(m, quick, library="neural-tangents")}


def _notes(m: dict, quick: bool, library: str = "eqntk") -> list[str]:
    entries = {name: n1 * n2 for name, (n1, n2) in _pairs(quick).items()}
    notes = []
    copy_rate = entries["closed"] / m["copy"]["median"] if "copy" in m else None
    for name, size in (("relu", "closed"), ("erf", "closed"), ("elementwise", "numerical")):
        if "median" not in m[name]:
            continue
        per_entry = m[name]["median"] / entries[size]
        line = (
            f"{library} {name}: {per_entry * 1e9:.2f} ns per entry, "
            f"{1 / per_entry / 1e9:.3f} G entries/s"
        )
        if copy_rate is not None:
            line += f" ({copy_rate / 1e9:.2f} G/s copy: {copy_rate * per_entry:.1f}x a copy)"
        notes.append(line)
    return notes


CASES = (
    Case(
        name="activations",
        module=__name__,
        eqntk="eqntk_side",
        nt="nt_side",
        rows=(
            Row("activations: ReLU map 1e7", "relu", "relu", target=Target(ratio=0.5)),
            Row("activations: Erf map 1e7", "erf", "erf", target=Target(ratio=0.5)),
            Row(
                "activations: Elementwise(tanh) 1e5",
                "elementwise",
                "elementwise",
                target=Target(ratio=0.5),
            ),
            Row("activations: copy 1e7", "copy"),
        ),
        description="ReLU, Erf and numerical Elementwise kernel maps, cost per entry",
    ),
)
