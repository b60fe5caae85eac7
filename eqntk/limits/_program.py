"""The limit of plain Equinox code: a module's `__call__` traced to a jaxpr and interpreted on
kernels.

A module without a registered rule is traced once (`jax.make_jaxpr`) with every sub-module
that has a rule kept as one opaque `eqntk_layer` operation. The jaxpr is then run on symbolic
values instead of arrays. In the infinite-width limit every value is, channel by channel, a
function of jointly Gaussian variables; a value here is a linear combination of *atoms*:

- `_Source`: the input, the output of a layer whose rule is applied (fresh weights: a centred
  Gaussian independent of everything computed before, unless the same weights are reused), or
  the output of another layer with a rule (its kernel known, its correlation with other values
  only known when they are independent);
- `_Fn`: a scalar function applied elementwise to one Gaussian value (`relu(x)`,
  `x + tanh(x)`, `where(x > 0, x, 0.1 * x)`, ...);
- `_SpatialMap`: a linear map of positions applied to every channel (means over positions,
  slicing, padding, reshapes and transposes that keep the channel axis first);
- `_Concat`: a concatenation along the channel axis; `_Flatten`: `ravel` of all axes;
- `_Product`: the product of two Gaussian values (Isserlis' theorem).

The kernel of two values is computed on demand, pair of atoms by pair of atoms, so that values
that share randomness are correlated exactly: `x + x` has kernel `4K`, `relu(a) + relu(b)` has
the cross terms `E[relu(a) relu(b)]` of correlated `a`, `b`. Gaussian pairs use their
covariance, a function and a Gaussian use Stein's lemma `E[f(g) h] = E[f'(g)] Cov(g, h)`, two
functions the bivariate Gaussian expectation (closed forms of ReLU-like functions and `erf`,
Gauss–Hermite quadrature otherwise). The NTK of two atoms is `E[f'(g) k'(h)] Θ(g, h)`.
"""

import math
import os
import pathlib
from collections.abc import Callable
from typing import Any

import beartype
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import jaxtyping
import numpy as np
from jax import lax
from jax._src import config as jax_config, source_info_util
from jax._src.interpreters.batching import BatchTracer
from jax.core import ShapedArray, Tracer
from jax.extend import core as jex_core
from jax.interpreters import batching

from ..nn import Conv, ConvLocal, ConvTranspose, Dense
from ..nn._activations import abrelu_entries, erf_entries
from . import _registry
from ._kernel import Kernel
from ._math import arccos_kernel_0, arccos_kernel_1, correlation, safe_sqrt
from ._registry import AbstractRule, Requirements, apply
from ._spatial import map_axes


# ---------------------------------------------------------------------------------------------
# Opaque layers in the trace.

_FRESH = (eqx.nn.Linear, eqx.nn.Conv, eqx.nn.ConvTranspose, Dense, Conv, ConvTranspose, ConvLocal)
# Modules with a rule whose code is traced through instead (their limit is that of their code,
# and tracing keeps the correlations of what they compute with the rest of the program).
_TRACED = (eqx.nn.Sequential, eqx.nn.MLP, eqx.nn.Lambda, eqx.nn.Identity, eqx.nn.PReLU)

layer_p = jex_core.Primitive("eqntk_layer")


def _layer_abstract_eval(x, *params, index, name, out_shape, out_dtype):
    return ShapedArray(out_shape, out_dtype)


def _layer_impl(*args, **kwargs):
    raise RuntimeError("`eqntk_layer` only marks a layer in a trace; it is never run.")


layer_p.def_abstract_eval(_layer_abstract_eval)
layer_p.def_impl(_layer_impl)


MAX_MAPPED = 32  # positions a layer may be mapped over with `jax.vmap` (per mapped axis)


def _layer_batch(args, dims, *, index, name, out_shape, out_dtype):
    """`jax.vmap` of a layer over an axis of its input: the layer applied to each slice, with
    the same weights (the interpreter correlates the outputs), stacked along the last axis."""
    x, *params = args
    dx, *dparams = dims
    size = x.shape[dx]
    # Under a second `vmap`, JAX's batching of the slices would move the channel axis.
    nested = isinstance(x, BatchTracer)
    if any(d is not None for d in dparams) or size > MAX_MAPPED or nested:
        if any(d is not None for d in dparams):
            what = "over a stack of its parameters"
        elif nested:
            what = "inside another `jax.vmap` (positions along several axes)"
        else:
            what = f"over {size} positions (at most {MAX_MAPPED} are applied one by one)"
        raise _Unsupported(
            f"`limit` cannot take the limit of `{name}` applied under `jax.vmap` {what}, at "
            f"{_current_user_line()}. Apply a layer to every position with a convolution of "
            f"filter size 1 (`eqx.nn.Conv1d(c_in, c_out, 1)`, `eqntk.nn.Conv(c_in, c_out, "
            f"(1,))`) or eqntk's `nn.Dense`, which acts on the channel axis at every position; "
            f"stacks of layers with `jax.lax.scan`."
        )
    outs = [
        layer_p.bind(
            lax.index_in_dim(x, i, dx, keepdims=False),
            *params,
            index=index,
            name=name,
            out_shape=out_shape,
            out_dtype=out_dtype,
        )
        for i in range(size)
    ]
    return jnp.stack(outs, axis=-1), len(out_shape)


def _current_user_line() -> str:
    frames = source_info_util.user_frames(source_info_util.current().traceback)
    for frame in frames:
        if not frame.file_name.startswith(_LIBRARIES):
            return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"
    return "an unknown line"


batching.primitive_batchers[layer_p] = _layer_batch


class _Opaque(eqx.Module):
    layer: Any
    index: int = eqx.field(static=True)

    def __call__(self, x, *args, key=None, **kwargs):
        out = eqx.filter_eval_shape(self.layer, x)
        params = jtu.tree_leaves(eqx.filter(self.layer, eqx.is_array))
        return layer_p.bind(
            x,
            *params,
            index=self.index,
            name=type(self.layer).__name__,
            out_shape=tuple(out.shape),
            out_dtype=out.dtype,
        )


def _has_rule(layer: Any) -> bool:
    return any(c in _registry._RULES for c in type(layer).__mro__)


def _elementwise_module(layer: Any) -> bool:
    from ._elementwise import AbstractElementwiseRule

    return isinstance(_registry._RULES.get(type(layer)), AbstractElementwiseRule)


def _wrap(model: Any) -> tuple[Any, list[Any]]:
    """Replace every sub-module with a rule (other than those traced through) by `_Opaque`."""
    layers: list[Any] = []

    def is_leaf(m):
        return isinstance(m, eqx.Module) and _has_rule(m) and not _traced(m)

    def wrap(m):
        if is_leaf(m):
            layers.append(m)
            return _Opaque(m, len(layers) - 1)
        return m

    def _traced(m):
        return isinstance(m, _TRACED) or _elementwise_module(m)

    # The top module itself is traced (it has no rule, or it is one traced through).
    wrapped = (
        jtu.tree_map(wrap, model, is_leaf=lambda m: m is not model and is_leaf(m))
        if not is_leaf(model)
        else model
    )
    return wrapped, layers


# ---------------------------------------------------------------------------------------------
# Symbolic values.


class _Atom:
    shape: tuple[int, ...]
    gaussian: bool = False
    ancestry: frozenset


class _Source(_Atom):
    """`shared`: for the output of a layer with fresh weights, `(layer, its input, a token
    of the weights)`: two sources with the same token are one layer applied to two inputs,
    correlated through their shared weights."""

    def __init__(
        self, kernel: Kernel, gaussian: bool, zero_mean: bool, ancestry=None, name="", shared=None
    ):
        self.kernel = kernel
        self.shape = tuple(kernel.shape1)
        self.gaussian = gaussian
        self.zero_mean = zero_mean
        self.ancestry = frozenset({id(self)}) if ancestry is None else ancestry
        self.name = name
        self.shared = shared


class _Fn(_Atom):
    """`f(g)` elementwise. `tag` names a closed form (`_PL`: piecewise linear with its only
    kink or jump at 0; `erf`); `breaks` are the points where `f` may be non-smooth (None:
    unknown); `where` is the user's line that made it."""

    def __init__(
        self,
        g: "_Lin",
        f: Callable,
        tag: tuple | None,
        breaks: frozenset | None = frozenset(),
        where: str = "",
    ):
        self.g, self.f, self.tag = g, f, tag
        self.breaks, self.where = breaks, where
        self.shape = g.shape
        self.ancestry = g.ancestry


class _SpatialMap(_Atom):
    def __init__(self, u: "_Lin", fn: Callable, shape: tuple[int, ...]):
        self.u, self.fn, self.shape = u, fn, shape
        self.gaussian = u.gaussian
        self.ancestry = u.ancestry


class _Concat(_Atom):
    def __init__(self, parts: tuple["_Lin", ...]):
        self.parts = parts
        self.widths = tuple(p.shape[0] for p in parts)
        self.shape = (sum(self.widths),) + parts[0].shape[1:]
        self.ancestry = frozenset().union(*(p.ancestry for p in parts))


class _Flatten(_Atom):
    def __init__(self, u: "_Lin"):
        self.u = u
        self.shape = (math.prod(u.shape),)
        self.ancestry = u.ancestry


class _Product(_Atom):
    """`g * h` of two Gaussian values (jointly Gaussian: moments by Isserlis' theorem)."""

    def __init__(self, g: "_Lin", h: "_Lin"):
        self.g, self.h = g, h
        self.shape = g.shape
        self.ancestry = g.ancestry | h.ancestry


class _Lin:
    """A linear combination of atoms with scalar coefficients."""

    def __init__(self, terms: dict, shape: tuple[int, ...]):
        self.terms = {a: c for a, c in terms.items()}
        self.shape = shape

    @staticmethod
    def of(atom: _Atom) -> "_Lin":
        return _Lin({atom: 1.0}, atom.shape)

    @property
    def gaussian(self) -> bool:
        return bool(self.terms) and all(a.gaussian for a in self.terms)

    @property
    def ancestry(self) -> frozenset:
        return frozenset().union(*(a.ancestry for a in self.terms))

    def scaled(self, c) -> "_Lin":
        return _Lin({a: c * v for a, v in self.terms.items()}, self.shape)

    def plus(self, other: "_Lin") -> "_Lin":
        terms = dict(self.terms)
        for a, v in other.terms.items():
            terms[a] = terms[a] + v if a in terms else v
        return _Lin(terms, self.shape)

    def same_as(self, other: "_Lin") -> bool:
        if set(self.terms) != set(other.terms):
            return False
        return all(_same_coefficient(self.terms[a], other.terms[a]) for a in self.terms)


def _same_coefficient(a, b) -> bool:
    if a is b:
        return True
    try:
        return bool(np.all(np.asarray(a) == np.asarray(b)))
    except Exception:  # tracers
        return False


class _Static:
    """A value off the data path (parameters, constants), with an identity token."""

    def __init__(self, value, token):
        self.value, self.token = value, token


# ---------------------------------------------------------------------------------------------
# Errors.


class _Unsupported(NotImplementedError):
    pass


def _where(eqns) -> str:
    """The innermost line of the user's code among the frames of `eqns` (innermost last)."""
    for eqn in reversed(eqns):
        try:
            frames = list(source_info_util.user_frames(eqn.source_info.traceback))
        except Exception:
            continue
        for frame in frames:
            if not frame.file_name.startswith(_LIBRARIES):
                return f"{frame.file_name}:{frame.start_line} ({frame.function_name})"
    return "an unknown line"


# The packages whose frames are not the user's: by their directories, not by a name in the path
# (a user's project may well live in a folder called `eqntk`). Shape checkers wrap the user's
# functions, so their frames come between the user's.
_LIBRARIES = tuple(
    {
        str(path) + os.sep
        for folder in (
            pathlib.Path(eqx.__file__).parent,
            pathlib.Path(jaxtyping.__file__).parent,
            pathlib.Path(beartype.__file__).parent,
            pathlib.Path(__file__).parents[1],
        )
        for path in (folder.absolute(), folder.resolve())
    }
)


def _unsupported(eqn, why: str, interp: Any) -> _Unsupported:
    model = interp.model
    name = type(model).__name__
    eqns = interp.stack + ([eqn] if eqn is not None else [])
    return _Unsupported(
        f"`limit` traced `{type(model).__module__}.{type(model).__qualname__}.__call__` to "
        f"interpret it on kernels, but cannot take the limit of the operation "
        f"`{eqns[-1].primitive.name if eqns else '?'}` at {_where(eqns)}: {why}\n"
        f"Register a kernel rule for the module (or for the sub-module doing this) with\n\n"
        f"    @eqntk.limits.register({name})\n"
        f"    class {name}Rule(eqntk.limits.AbstractRule):\n"
        f"        def requirements(self, layer, wanted): ...\n"
        f"        def __call__(self, layer, k, wanted): ...\n"
    )


# ---------------------------------------------------------------------------------------------
# Kernel arrays. Internally a moment of atoms `a`, `b` is laid out `(lead, *S_a, *S_b)`, with
# `lead = (N1, N2)` for the cross kernel ("12") and `(N,)` for one batch with itself ("11",
# "22", batch diagonal only).


def _deinterleave(a, n_lead: int, n: int):
    perm = list(range(n_lead)) + [n_lead + 2 * d for d in range(n)]
    perm += [n_lead + 2 * d + 1 for d in range(n)]
    return jnp.transpose(a, perm)


def _interleave(a, n_lead: int, n: int):
    perm = list(range(n_lead))
    for d in range(n):
        perm += [n_lead + d, n_lead + n + d]
    return jnp.transpose(a, perm)


def _diagonal_positions(a, n_lead: int, n: int):
    """Entries at the same position of both atoms: `(lead, *S, *S) -> (lead, *S)`."""
    for d in range(n):
        a = jnp.diagonal(a, axis1=n_lead + d, axis2=n_lead + n - d + d)
        a = jnp.moveaxis(a, -1, n_lead + d)
    return a


def _own_modes(mode: str) -> tuple[str, str]:
    """The modes of the moments of each side with itself: `"11"` and `"22"` for the cross
    kernel (`mode="12"`), the mode itself on both sides otherwise."""
    return ("11", "22") if mode == "12" else (mode, mode)


def _outer_positions(a, b, mode: str):
    """Per-position values of the two sides, `a` `(N1, *S1)` and `b` `(N2, *S2)`, broadcast
    to the layout of a moment: `(N1, N2, *S1, *S2)` for the cross kernel (`mode="12"`),
    `(N, *S1, *S2)` for one batch with itself."""
    n_a, n_b = a.ndim - 1, b.ndim - 1
    if mode == "12":
        a = a.reshape((a.shape[0], 1) + a.shape[1:] + (1,) * n_b)
        b = b.reshape((1, b.shape[0]) + (1,) * n_a + b.shape[1:])
    else:
        a = a.reshape(a.shape + (1,) * n_b)
        b = b.reshape((b.shape[0],) + (1,) * n_a + b.shape[1:])
    return a, b


_Moment = tuple[Any, Any]  # (nngp, ntk or None)


class _Interpreter:
    def __init__(self, model, layers, k: Kernel, deg: int = 25):
        self.model = model
        self.layers = layers
        self.k = k
        self.deg = deg
        self.with_ntk = k.ntk is not None
        self.cache: dict = {}
        self.merges: dict = {}
        self.calls: dict = {}
        self.stack: list = []  # the equations being evaluated, outermost first

    # -- moments ------------------------------------------------------------------------------

    def n_lead(self, mode: str) -> int:
        return 2 if mode == "12" else 1

    def zeros(self, a, b, mode: str):
        n1, n2 = self.k.nngp.shape[:2]
        lead = (n1, n2) if mode == "12" else ((n1,) if mode == "11" else (n2,))
        z = jnp.zeros(lead + tuple(a.shape[1:]) + tuple(b.shape[1:]), self.k.nngp.dtype)
        return z, (z if (mode == "12" and self.with_ntk) else None)

    def merged(self, u: _Lin) -> _Lin:
        """`u`, with its functions of one Gaussian summed into one when one of them has a
        kink or jump that is not at 0 alone (`softplus` is `max(t, 0) + log1p(exp(-|t|))`: two
        kinked terms whose sum is smooth)."""
        if not any(
            isinstance(a, _Fn) and not _is_pl(a.tag) and a.breaks != frozenset() for a in u.terms
        ):
            return u
        if id(u) not in self.merges:
            single = _as_function_of_one_gaussian(u)
            if single is None:
                self.merges[id(u)] = (u, u)
            else:
                g, f, tag, breaks = single
                self.merges[id(u)] = (u, _Lin.of(_Fn(g, f, tag, breaks, _merged_where(u))))
        return self.merges[id(u)][1]

    def lin_moment(self, u: _Lin, v: _Lin, mode: str) -> _Moment:
        u, v = self.merged(u), self.merged(v)
        total_k, total_t = None, None
        for a, ca in u.terms.items():
            for b, cb in v.terms.items():
                mk, mt = self.atom_moment(a, b, mode)
                c = ca * cb
                total_k = c * mk if total_k is None else total_k + c * mk
                if mt is not None:
                    total_t = c * mt if total_t is None else total_t + c * mt
        if total_k is None:
            return self.zeros(u, v, mode)
        if mode == "12" and self.with_ntk and total_t is None:
            total_t = jnp.zeros_like(total_k)
        return total_k, total_t

    def atom_moment(self, a: _Atom, b: _Atom, mode: str) -> _Moment:
        key = (id(a), id(b), mode)
        if key not in self.cache:
            self.cache[key] = self._atom_moment(a, b, mode)
        return self.cache[key]

    def _atom_moment(self, a: _Atom, b: _Atom, mode: str) -> _Moment:
        lead = self.n_lead(mode)
        if isinstance(a, _SpatialMap):
            mk, mt = self.lin_moment(a.u, _Lin.of(b), mode)
            axes = list(range(lead, lead + len(a.u.shape) - 1))
            f = lambda m: map_axes(m, a.fn, axes, at=lead)
            return f(mk), None if mt is None else f(mt)
        if isinstance(b, _SpatialMap):
            mk, mt = self.lin_moment(_Lin.of(a), b.u, mode)
            start = lead + len(a.shape) - 1
            axes = list(range(start, start + len(b.u.shape) - 1))
            f = lambda m: map_axes(m, b.fn, axes, at=start)
            return f(mk), None if mt is None else f(mt)
        if isinstance(a, _Flatten) or isinstance(b, _Flatten):
            if isinstance(a, _Flatten) and isinstance(b, _Flatten) and a.u.shape == b.u.shape:
                mk, mt = self.lin_moment(a.u, b.u, mode)
                n = len(a.u.shape) - 1
                f = lambda m: jnp.mean(
                    _diagonal_positions(m, lead, n), axis=tuple(range(lead, lead + n))
                )
                return f(mk), None if mt is None else f(mt)
            return self.independent(a, b, mode)
        if isinstance(a, _Concat) or isinstance(b, _Concat):
            if isinstance(a, _Concat) and isinstance(b, _Concat) and a.widths == b.widths:
                total = sum(a.widths)
                mk, mt = 0.0, None
                for w, pa, pb in zip(a.widths, a.parts, b.parts):
                    k_, t_ = self.lin_moment(pa, pb, mode)
                    mk = mk + (w / total) * k_
                    mt = None if t_ is None else (0.0 if mt is None else mt) + (w / total) * t_
                return mk, mt
            return self.independent(a, b, mode)
        if isinstance(a, _Product) or isinstance(b, _Product):
            if isinstance(a, _Product) and isinstance(b, _Product):
                return self.isserlis(a, b, mode)
            if a.gaussian or b.gaussian:
                # An odd moment of centred jointly Gaussian values; the NTK terms
                # E[h] Θ(g, c) vanish likewise.
                return self.zeros(a, b, mode)
            return self.independent(a, b, mode)
        if isinstance(a, _Source) and isinstance(b, _Source):
            if a is b:
                return self.source_moment(a, mode)
            if a.shared is not None and b.shared is not None and a.shared[2] == b.shared[2]:
                return self.shared_moment(a, b, mode)
            return self.independent(a, b, mode)
        if isinstance(a, _Fn) and isinstance(b, _Fn):
            return self.two_functions(a, b, mode)
        if isinstance(a, _Fn):
            if b.gaussian:
                return self.stein(a, b, mode, first=True)
            return self.independent(a, b, mode)
        if isinstance(b, _Fn):
            if a.gaussian:
                return self.stein(b, a, mode, first=False)
            return self.independent(a, b, mode)
        raise AssertionError((a, b))

    def independent(self, a: _Atom, b: _Atom, mode: str) -> _Moment:
        """Zero, when the two atoms are independent and one of them is centred."""
        centred = lambda x: (
            (isinstance(x, _Source) and x.zero_mean)
            or (isinstance(x, _SpatialMap | _Concat | _Flatten) and x.gaussian)
        )
        if not (a.ancestry & b.ancestry) and (centred(a) or centred(b)):
            return self.zeros(a, b, mode)
        raise _unsupported(
            None,
            f"two values that share randomness (or are not centred) are combined in a way "
            f"whose joint covariance is not tracked: {_describe(a)} and {_describe(b)}. "
            f"Supported: sums and elementwise functions of values, where nonlinearities act on "
            f"Gaussian values (outputs of affine layers and their linear combinations).",
            self,
        )

    def isserlis(self, p: _Product, q: _Product, mode: str) -> _Moment:
        """`E[g1 h1 g2 h2] = E[g1 g2] E[h1 h2] + E[g1 h2] E[h1 g2] + E[g1 h1] E[g2 h2]`, and the
        NTK by the product rule: `Θ = Σ` (the other two factors' covariance) `×` Θ."""
        kgg, tgg = self.lin_moment(p.g, q.g, mode)
        khh, thh = self.lin_moment(p.h, q.h, mode)
        kgh, tgh = self.lin_moment(p.g, q.h, mode)
        khg, thg = self.lin_moment(p.h, q.g, mode)
        s1, s2 = _own_modes(mode)
        m1 = _diagonal_positions(self.lin_moment(p.g, p.h, s1)[0], 1, len(p.shape) - 1)
        m2 = _diagonal_positions(self.lin_moment(q.g, q.h, s2)[0], 1, len(q.shape) - 1)
        m1, m2 = _outer_positions(m1, m2, mode)
        nngp = kgg * khh + kgh * khg + m1 * m2
        ntk = None
        if tgg is not None:
            assert thh is not None and tgh is not None and thg is not None
            ntk = khh * tgg + kgg * thh + khg * tgh + kgh * thg
        return nngp, ntk

    def source_moment(self, s: _Source, mode: str) -> _Moment:
        k = s.kernel
        n = len(s.shape) - 1
        if mode == "12":
            return _deinterleave(k.nngp, 2, n), (
                None if k.ntk is None else _deinterleave(k.ntk, 2, n)
            )
        cov = k.cov1 if mode == "11" else k.cov2_or_cov1
        return _deinterleave(cov, 1, n), None

    def shared_moment(self, a: _Source, b: _Source, mode: str) -> _Moment:
        """The moment of one layer's outputs on two inputs `u`, `v`: its rule on the kernel of
        `u` against `v`, as for one input against another (the rule of `W x + b` does not care
        whether the two sides are one input or two)."""
        assert a.shared is not None and b.shared is not None
        (layer, u, _), (_, v, _) = a.shared, b.shared
        n = len(u.shape) - 1
        s1, s2 = _own_modes(mode)
        kuu = _interleave(self.lin_moment(u, u, s1)[0], 1, n)
        kvv = _interleave(self.lin_moment(v, v, s2)[0], 1, n)
        kuv, tuv = self.lin_moment(u, v, mode)
        wanted = Requirements(diagonal_spatial=False)

        def cross(kuv, tuv, kuu, kvv, n_lead: int):
            k = Kernel(
                nngp=_interleave(kuv, 2, n),
                ntk=None if tuv is None else _interleave(tuv, 2, n),
                cov1=kuu,
                cov2=kvv,
                shape1=u.shape,
                shape2=v.shape,
                diagonal_spatial=False,
                is_gaussian=u.gaussian and v.gaussian,
                x1_is_x2=False,
            )
            with jax_config.eager_constant_folding(False):
                out = apply(layer, k, wanted)
            assert isinstance(out, Kernel)  # an affine layer: one stream
            m = len(out.shape1) - 1
            nngp = _deinterleave(out.nngp, 2, m)
            ntk = None if out.ntk is None else _deinterleave(out.ntk, 2, m)
            return (nngp, ntk) if n_lead == 2 else (nngp[0, 0], None)

        if mode == "12":
            return cross(kuv, tuv, kuu, kvv, 2)
        # One batch with itself: each example's two outputs, as a kernel of one example
        # against one.
        one = lambda kuv, kuu, kvv: cross(kuv[None, None], None, kuu[None], kvv[None], 1)[0]
        return jax.vmap(one)(kuv, kuu, kvv), None

    def variances(self, g: _Lin, side: str):
        """The variance of a Gaussian value at each position, `(N, *S)`."""
        mk, _ = self.lin_moment(g, g, side)
        return _diagonal_positions(mk, 1, len(g.shape) - 1)

    def broadcast_variances(self, g: _Lin, h: _Lin, mode: str):
        s1, s2 = _own_modes(mode)
        return _outer_positions(self.variances(g, s1), self.variances(h, s2), mode)

    def stein(self, a: _Fn, b: _Atom, mode: str, first: bool) -> _Moment:
        """`E[f(g) b] = E[f'(g)] Cov(g, b)` for a Gaussian `b`; the NTK has the same factor."""
        if first:
            mk, mt = self.lin_moment(a.g, _Lin.of(b), mode)
            q, _ = self.broadcast_variances(a.g, _Lin.of(b), mode)
        else:
            mk, mt = self.lin_moment(_Lin.of(b), a.g, mode)
            _, q = self.broadcast_variances(_Lin.of(b), a.g, mode)
        if not _is_pl(a.tag) and (a.tag is None or a.tag[0] != "erf"):
            _check_smooth(a, self)
        factor = _regression_factor(a, q, self.deg)
        ntk_factor = None if mt is None else _mean_derivative(a, q, self.deg)
        return factor * mk, None if mt is None else ntk_factor * mt

    def two_functions(self, a: _Fn, b: _Fn, mode: str) -> _Moment:
        q12, t12 = self.lin_moment(a.g, b.g, mode)
        q11, q22 = self.broadcast_variances(a.g, b.g, mode)
        q11 = jnp.broadcast_to(q11, q12.shape)
        q22 = jnp.broadcast_to(q22, q12.shape)
        if a.tag is not None and a.tag == b.tag and a.tag[0] == "erf":
            return _closed_form(a.tag, q12.dtype)(q11, q12, q22, t12)
        if _is_pl(a.tag) and _is_pl(b.tag):
            assert a.tag is not None and b.tag is not None
            if a.tag == b.tag and a.tag[3] == a.tag[4] == 0:  # a ReLU-like function
                return _closed_form(("abrelu", a.tag[1], a.tag[2]), q12.dtype)(q11, q12, q22, t12)
            return _pl_moment(a, b, q11, q12, q22, t12)
        if _is_pl(a.tag) and _smooth(b):
            return _pl_smooth_moment(a, b, q11, q12, q22, t12, self.deg)
        if _is_pl(b.tag) and _smooth(a):
            return _pl_smooth_moment(b, a, q22, q12, q11, t12, self.deg)
        _check_smooth(a, self)
        _check_smooth(b, self)
        return _bivariate(
            a.f, b.f, q11, q12, q22, t12, self.deg, _fn_derivative(a), _fn_derivative(b)
        )

    # -- the jaxpr ------------------------------------------------------------------------------

    def run(self, closed, args):
        return self.eval_jaxpr(closed.jaxpr, closed.consts, args)

    def eval_jaxpr(self, jaxpr, consts, args):
        env: dict = {}

        def read(v):
            if isinstance(v, jex_core.Literal):
                return _Static(v.val, ("literal", repr(v.val)))
            return env[v]

        for v, c in zip(jaxpr.constvars, consts):
            env[v] = c if isinstance(c, _Static | _Lin) else _Static(c, ("const", id(c)))
        for v, a in zip(jaxpr.invars, args):
            env[v] = a
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            self.stack.append(eqn)
            try:
                outs: Any = self.eval_eqn(eqn, ins)
            finally:
                self.stack.pop()
            if not eqn.primitive.multiple_results:
                outs = [outs]
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def eval_eqn(self, eqn, ins):
        prim = eqn.primitive
        name = prim.name
        if name == "eqntk_layer":
            return self.opaque(eqn, ins)
        sub = _sub_jaxpr(eqn)
        if name == "scan":
            return self.scan(eqn, ins)
        if sub is not None and name not in ("cond", "while"):
            closed, n_skip = sub
            consts = [_Static(c, ("const", id(c))) for c in closed.consts]
            return self.eval_jaxpr(closed.jaxpr, consts, ins[n_skip:])
        if all(isinstance(x, _Static) for x in ins):
            values = [x.value for x in ins]
            out = prim.bind(*values, **eqn.params)
            token = (id(eqn), tuple(x.token for x in ins))
            if prim.multiple_results:
                return [_Static(o, (token, i)) for i, o in enumerate(out)]
            return _Static(out, token)
        handler = _STRUCTURAL.get(name)
        if handler is not None:
            return handler(self, eqn, ins)
        if name in _ELEMENTWISE:
            return self.elementwise(eqn, ins)
        raise _unsupported(eqn, "it has no kernel rule in the program interpreter.", self)

    def opaque(self, eqn, ins):
        x, params = ins[0], ins[1:]
        if not isinstance(x, _Lin):
            raise _unsupported(eqn, "a layer is applied to a constant.", self)
        index = eqn.params["index"]
        template = self.layers[index]
        arrays, static = eqx.partition(template, eqx.is_array)
        treedef = jtu.tree_structure(arrays)
        layer = eqx.combine(jtu.tree_unflatten(treedef, [p.value for p in params]), static)
        identity = (index, tuple(p.token for p in params))
        for parent, out in self.calls.get(identity, []):
            if parent.same_as(x):
                return out
        previous = self.calls.setdefault(identity, [])
        if previous and not isinstance(template, _FRESH):
            raise _unsupported(
                eqn,
                f"the layer `{type(template).__name__}` is applied twice to different inputs "
                f"(shared parameters); the outputs' correlation is tracked for the affine "
                f"layers only (`Linear`, `Conv`, `ConvTranspose`, `Dense`, `ConvLocal`).",
                self,
            )
        if previous and tuple(x.shape) != tuple(previous[0][0].shape):
            raise _unsupported(
                eqn,
                f"the layer `{type(template).__name__}` is applied to inputs of different "
                f"shapes, {previous[0][0].shape} and {x.shape} (shared weights on different "
                f"shapes are not supported).",
                self,
            )
        kin = self.kernel_of(x)
        # The layer's rule is staged as usual, not evaluated at compile time like the program's
        # constants: there an `eqx.error_if` on a traced parameter (e.g. LayerNorm's weight
        # check) raised whatever the parameter's value.
        with jax_config.eager_constant_folding(False):
            out_k = apply(layer, kin, Requirements(diagonal_spatial=False))
        if isinstance(out_k, tuple):
            raise _unsupported(eqn, "a layer returned several streams.", self)
        if out_k.diagonal_spatial and out_k.spatial_ndim:
            raise AssertionError("rules keep the full layout when asked for it")
        if isinstance(template, _FRESH):
            # Fresh weights: independent of everything computed before, except the outputs of
            # the same weights on other inputs (one ancestry for all of them).
            first = previous[0][1].terms if previous else None
            ancestry = next(iter(first)).ancestry if first else None
            src = _Source(
                out_k,
                out_k.is_gaussian,
                True,
                ancestry=ancestry,
                name=type(template).__name__,
                shared=(layer, x, identity),
            )
        else:
            src = _Source(
                out_k,
                out_k.is_gaussian,
                out_k.is_gaussian,
                ancestry=x.ancestry,
                name=type(template).__name__,
            )
        out = _Lin.of(src)
        previous.append((x, out))
        return out

    def kernel_of(self, x: _Lin) -> Kernel:
        n = len(x.shape) - 1
        k12, t12 = self.lin_moment(x, x, "12")
        k11, _ = self.lin_moment(x, x, "11")
        cov2 = None
        if not self.k.x1_is_x2:
            cov2 = _interleave(self.lin_moment(x, x, "22")[0], 1, n)
        return Kernel(
            nngp=_interleave(k12, 2, n),
            ntk=None if t12 is None else _interleave(t12, 2, n),
            cov1=_interleave(k11, 1, n),
            cov2=cov2,
            shape1=x.shape,
            shape2=x.shape,
            diagonal_spatial=False,
            is_gaussian=x.gaussian,
            x1_is_x2=self.k.x1_is_x2,
            pattern1=self.k.pattern1,
            pattern2=self.k.pattern2,
        )

    def scan(self, eqn, ins):
        p = eqn.params
        closed = p["jaxpr"]
        n_consts, n_carry, length = p["num_consts"], p["num_carry"], p["length"]
        consts, carry, xs = (
            ins[:n_consts],
            ins[n_consts : n_consts + n_carry],
            ins[n_consts + n_carry :],
        )
        for x in xs:
            if not isinstance(x, _Static):
                raise _unsupported(
                    eqn,
                    "`lax.scan` over a sequence of data values is not supported (scan over "
                    "stacked layers is).",
                    self,
                )
        ys_all = []
        order = range(length - 1, -1, -1) if p["reverse"] else range(length)
        for i in order:
            x_i = [_Static(x.value[i], ("slice", x.token, i)) for x in xs]
            body_consts = [_Static(c, ("const", id(c))) for c in closed.consts]
            outs = self.eval_jaxpr(closed.jaxpr, body_consts, list(consts) + list(carry) + x_i)
            carry, ys = outs[:n_carry], outs[n_carry:]
            ys_all.append(ys)
        if p["reverse"]:
            ys_all = ys_all[::-1]
        stacked = []
        for j in range(len(eqn.outvars) - n_carry):
            column = [ys[j] for ys in ys_all]
            if not all(isinstance(y, _Static) for y in column):
                raise _unsupported(
                    eqn, "a `lax.scan` that stacks data values is not supported.", self
                )
            stacked.append(
                _Static(jnp.stack([y.value for y in column]), ("stack", id(eqn), len(column)))
            )
        return list(carry) + stacked

    # -- elementwise ----------------------------------------------------------------------------

    def elementwise(self, eqn, ins):
        name = eqn.primitive.name
        data = [x for x in ins if isinstance(x, _Lin)]
        shape = data[0].shape
        for x in data:
            if x.shape != shape:
                raise _unsupported(eqn, "operands of different shapes.", self)
        statics = []
        for x in ins:
            if isinstance(x, _Static):
                statics.append(_scalar(x, eqn, self))
        # Linear operations keep linear combinations.
        if name in ("add", "add_any", "sub") and len(data) == 2:
            a, b = ins
            return a.plus(b if name != "sub" else b.scaled(-1.0))
        if name == "neg":
            return data[0].scaled(-1.0)
        if name == "mul" and len(data) == 1:
            return data[0].scaled(statics[0])
        if name == "div" and len(data) == 1 and isinstance(ins[0], _Lin):
            return data[0].scaled(1.0 / statics[0])
        floating = all(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.invars)
        passes = ("convert_element_type", "copy", "copy_p", "reduce_precision")
        if name in passes and len(ins) == 1 and floating:
            return ins[0]
        # Otherwise: a scalar function of one Gaussian value.
        singles = []
        for x in ins:
            if isinstance(x, _Lin):
                s = _as_function_of_one_gaussian(x)
                if s is None:
                    raise _unsupported(
                        eqn,
                        "a nonlinear function is applied to a value that is not a function of "
                        "one Gaussian value (e.g. a sum of nonlinear functions of independent "
                        "layers); its limit needs the joint law of several Gaussians. Put an "
                        "affine layer in between.",
                        self,
                    )
                singles.append(s)
        g = singles[0][0]
        # Express every operand as a function of the first one's Gaussian (`0.1 * h` and `h`
        # are both functions of `h`).
        ratios = [_ratio(single[0], g) for single in singles]
        if name == "mul" and len(singles) == 2 and ratios[1] is None:
            if all(single[2] == _IDENTITY for single in singles):
                return _Lin.of(_Product(g, singles[1][0]))
        if any(r is None for r in ratios):
            raise _unsupported(
                eqn,
                "a nonlinear function of two different values (e.g. the product of a "
                "nonlinear function and another value); only functions of one Gaussian value "
                "and products of two Gaussian values are supported.",
                self,
            )
        erf = _erf_tag(name, ins, singles, ratios)
        pieces = [_pieces_of(single[2], r) for single, r in zip(singles, ratios)]
        breaks = _scaled_breaks([single[3] for single in singles], ratios)
        singles = [
            single if r == 1.0 else (g, (lambda t, f=single[1], r=r: f(r * t)), None, None)
            for single, r in zip(singles, ratios)
        ]
        prim, params = eqn.primitive, eqn.params
        parts = []
        it = iter(singles)
        st = iter(statics)
        for x in ins:
            parts.append(("data", next(it)[1]) if isinstance(x, _Lin) else ("const", next(st)))

        def f(t):
            args = [
                fn(t)
                if kind == "data"
                else jnp.broadcast_to(jnp.asarray(fn, t.dtype), t.shape)
                if jnp.issubdtype(jnp.asarray(fn).dtype, jnp.floating)
                else jnp.broadcast_to(jnp.asarray(fn), t.shape)
                for kind, fn in parts
            ]
            return prim.bind(*args, **params)

        operands = []
        it_p = iter(pieces)
        st = iter(statics)
        for x in ins:
            operands.append(next(it_p) if isinstance(x, _Lin) else _constant_pieces(next(st)))
        out_pieces, crossings = _pieces_after(name, operands)
        if out_pieces is not None:
            tag = (_PL, *out_pieces)
            breaks = frozenset() if _affine(out_pieces) else frozenset({0.0})
        else:
            tag = erf
            if name in _NON_SMOOTH:
                breaks = None if (breaks is None or crossings is None) else breaks | crossings
        return _Lin.of(_Fn(g, f, tag, breaks, _where(self.stack)))


# ---------------------------------------------------------------------------------------------
# Piecewise-linear functions with their only kink or jump at 0, tracked exactly through the
# program: `(a_neg, a_pos, c_neg, c_pos)` is `f(t) = a_neg t + c_neg` for `t < 0` and
# `a_pos t + c_pos` for `t > 0` (the value at 0 has probability zero). ReLU, leaky ReLU, `abs`,
# steps (`t > 0`, `heaviside`, `where(t > 0, 1, 0)`), `sign` and their sums, scalings and
# products such as `t * (t > 0)` are of this form; their Gaussian moments have closed forms.

_PL = "pl"
# Selections and comparisons: elementwise, and where a function's pieces are chosen.
_SELECTIONS = {"select_n", "gt", "ge", "lt", "le", "eq", "ne", "and", "or", "not"}
_NON_SMOOTH = _SELECTIONS | {
    "max",
    "min",
    "abs",
    "sign",
    "clamp",
    "floor",
    "ceil",
    "round",
    "nextafter",
}


def _float(c) -> float | None:
    try:
        v = float(c)
    except Exception:  # traced
        return None
    return v if math.isfinite(v) else None


def _pieces_of(tag, r) -> tuple | None:
    """The pieces of `f(r t)` for `f` with `tag`, or None."""
    if tag == _IDENTITY:
        p = (1.0, 1.0, 0.0, 0.0)
    elif tag is not None and tag[0] == _PL:
        p = tag[1:]
    else:
        return None
    r = _float(r)
    if r is None or r == 0:
        return None
    an, ap, cn, cp = p
    return (r * an, r * ap, cn, cp) if r > 0 else (r * ap, r * an, cp, cn)


def _constant_pieces(c) -> tuple | None:
    v = _float(c)
    return None if v is None else (0.0, 0.0, v, v)


def _affine(p) -> bool:
    return p[0] == p[1] and p[2] == p[3]


def _scaled_breaks(breaks, ratios):
    out = frozenset()
    for b, r in zip(breaks, ratios):
        if b is None:
            return None
        out = out | frozenset(x / r for x in b) if r else out
    return out


def _side_sign(a: float, c: float, s: int) -> tuple[float | None, float | None]:
    """The sign of `a t + c` on the half-line `s t > 0` (`0.0`: identically zero), or
    `(None, t*)` where it changes sign at `t*`."""
    if a == 0:
        return float(np.sign(c)), None
    if c == 0 or np.sign(c) == np.sign(a * s):
        return float(np.sign(c) if c else np.sign(a * s)), None
    return None, -c / a


def _sides(p):
    """`[(s, a, c)]` for the half-lines `s t > 0`."""
    return [(-1, p[0], p[2]), (1, p[1], p[3])]


def _compare_sides(p, q):
    """Per side, the sign of `p - q`, and the points where it changes (None: not pieces)."""
    if p is None or q is None:
        return None, None
    signs, crossings = [], set()
    for (s, a1, c1), (_, a2, c2) in zip(_sides(p), _sides(q)):
        sign, t = _side_sign(a1 - a2, c1 - c2, s)
        signs.append(sign)
        if t is not None:
            crossings.add(t)
    return signs, frozenset(crossings)


def _pieces_after(name, ops):
    """The pieces of a primitive's result from those of its operands (`(pieces, None)`), or
    `(None, crossings)`: the result is not of this form, and may be non-smooth at `crossings`
    (None: unknown points)."""
    if name == "select_n":
        # It switches only where its predicate does, and those points are among its breaks.
        return _pieces_after_select(ops) if ops and ops[0] is not None else (None, frozenset())
    if any(o is None for o in ops):
        return None, None
    if name in ("convert_element_type", "copy", "copy_p", "reduce_precision"):
        return ops[0], None
    if name in ("add", "add_any", "sub") and len(ops) == 2:
        sign = -1.0 if name == "sub" else 1.0
        return tuple(x + sign * y for x, y in zip(*ops)), None
    if name == "neg":
        return tuple(-x for x in ops[0]), None
    if name == "mul" and len(ops) == 2:
        out = []
        for (_, a1, c1), (_, a2, c2) in zip(_sides(ops[0]), _sides(ops[1])):
            if a1 * a2 != 0:
                return None, frozenset({0.0})
            out.append((a1 * c2 + a2 * c1, c1 * c2))
        return (out[0][0], out[1][0], out[0][1], out[1][1]), None
    if name == "div" and len(ops) == 2 and _affine(ops[1]) and ops[1][0] == 0 and ops[1][2]:
        return tuple(x / ops[1][2] for x in ops[0]), None
    zero = (0.0, 0.0, 0.0, 0.0)
    if name in ("max", "min", "abs", "sign", "gt", "ge", "lt", "le"):
        p, q = (ops[0], zero) if len(ops) == 1 else ops
        signs, crossings = _compare_sides(p, q)
        if signs is None or any(v is None for v in signs):
            return None, crossings
        out = []
        for sign, (_, a1, c1), (_, a2, c2) in zip(signs, _sides(p), _sides(q)):
            assert sign is not None
            if name == "max":
                out.append((a1, c1) if sign >= 0 else (a2, c2))
            elif name == "min":
                out.append((a1, c1) if sign <= 0 else (a2, c2))
            elif name == "abs":
                out.append((a1 * sign, c1 * sign) if sign else (0.0, 0.0))
            elif name == "sign":
                out.append((0.0, sign))
            elif sign == 0:  # equal on the whole side
                out.append((0.0, float(name in ("ge", "le"))))
            else:
                out.append((0.0, float((sign > 0) == (name in ("gt", "ge")))))
        return (out[0][0], out[1][0], out[0][1], out[1][1]), None
    if name == "clamp" and len(ops) == 3:
        lo, x, hi = ops
        low, c1 = _pieces_after("max", [x, lo])
        if low is None:
            return None, c1
        return _pieces_after("min", [low, hi])
    if name in ("eq", "ne") and len(ops) == 2:
        signs, crossings = _compare_sides(*ops)
        if signs is None or any(v is None for v in signs):
            return None, crossings
        hit = [float((v == 0) == (name == "eq")) for v in signs]
        return (0.0, 0.0, hit[0], hit[1]), None
    return None, None


def _pieces_after_select(ops):
    """`select_n(which, *cases)` with a piecewise-constant `which`: it switches only at 0."""
    which, cases = ops[0], ops[1:]
    if not (which[0] == which[1] == 0):
        return None, frozenset()
    out = []
    for s, (_, _, k) in zip((0, 1), _sides(which)):
        if k not in range(len(cases)):
            return None, None
        case = cases[int(k)]
        if case is None:
            return None, frozenset()
        out.append((case[s], case[2 + s]))
    return (out[0][0], out[1][0], out[0][1], out[1][1]), None


_IDENTITY = ("identity",)


def _erf_tag(name, ins, singles, ratios):
    if name == "erf" and len(ins) == 1 and singles[0][2] == _IDENTITY and ratios[0] == 1.0:
        return ("erf", 1.0, 1.0, 0.0)
    return None


def _ratio(u: "_Lin", g: "_Lin") -> float | None:
    """`r` with `u = r g` (both linear combinations of the same atoms), or None."""
    if u.same_as(g):
        return 1.0
    if set(u.terms) != set(g.terms):
        return None
    try:
        ratios = [float(u.terms[a]) / float(g.terms[a]) for a in g.terms]
    except Exception:  # traced coefficients
        return None
    if all(abs(r - ratios[0]) <= 1e-12 * max(1.0, abs(ratios[0])) for r in ratios):
        return ratios[0]
    return None


def _is_zero(c) -> bool:
    try:
        return float(c) == 0.0
    except Exception:
        return False


def _scalar(x: _Static, eqn, model):
    value = jnp.asarray(x.value)
    if value.size == 1:
        return value.reshape(())
    if not isinstance(value, Tracer):
        flat = value.ravel()
        if bool(jnp.all(flat == flat[0])):
            return flat[0]
    raise _unsupported(
        eqn,
        f"a constant of shape {value.shape} that varies across entries; in the limit every "
        f"channel must be treated alike (only scalar constants are supported).",
        model,
    )


def _as_function_of_one_gaussian(u: _Lin):
    """`(g, f, tag, breaks)` with `u = f(g)` elementwise for a Gaussian value `g`, or None."""
    gauss = {a: c for a, c in u.terms.items() if a.gaussian}
    fns = {a: c for a, c in u.terms.items() if isinstance(a, _Fn)}
    if len(gauss) + len(fns) != len(u.terms):
        return None
    if not fns:
        if not gauss:
            return None
        return _Lin(gauss, u.shape), (lambda t: t), _IDENTITY, frozenset()
    g = next(iter(fns)).g
    if not all(a.g.same_as(g) for a in fns):
        return None
    scale = 0.0
    if gauss:
        if set(gauss) != set(g.terms):
            return None
        ratios = []
        for a, c in gauss.items():
            try:
                ratios.append(float(c) / float(g.terms[a]))
            except Exception:
                return None
        if not all(abs(r - ratios[0]) <= 1e-12 * max(1.0, abs(ratios[0])) for r in ratios):
            return None
        scale = ratios[0]
    items = list(fns.items())
    if len(items) == 1 and not scale and _is_one(items[0][1]):
        # The function itself: keeps its dtype (a comparison stays boolean).
        return g, items[0][0].f, items[0][0].tag, items[0][0].breaks

    def f(t):
        out = scale * t if scale else 0.0
        for a, c in items:
            out = out + c * a.f(t)
        return out

    breaks = _scaled_breaks([a.breaks for a, _ in items], [1.0] * len(items))
    # A sum of piecewise-linear functions (kinks at 0) is one; anything else has no tag.
    total = (scale, scale, 0.0, 0.0)
    for a, c in items:
        p, c = _pieces_of(a.tag, 1.0), _float(c)
        if p is None or c is None:
            return g, f, None, breaks
        total = tuple(x + c * y for x, y in zip(total, p))
    return g, f, (_PL, *total), breaks


def _is_one(c) -> bool:
    try:
        return float(c) == 1.0
    except Exception:
        return False


def _describe(a: _Atom) -> str:
    if isinstance(a, _Source):
        return f"the output of `{a.name}`" if a.name else "the input"
    if isinstance(a, _Fn):
        return "a nonlinear function of a Gaussian value"
    return type(a).__name__.strip("_")


def _sub_jaxpr(eqn):
    """The called jaxpr of a call-like primitive, and how many leading operands it skips."""
    p = eqn.params
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in p:
            j = p[key]
            if hasattr(j, "jaxpr") and hasattr(j, "consts"):
                return j, 0
            if hasattr(j, "eqns"):
                return jex_core.ClosedJaxpr(j, ()), 0
    return None


# ---------------------------------------------------------------------------------------------
# Expectations.


def _closed_form(tag, dtype):
    # The entry maps read only the dtype and whether there are positions from their kernel
    # (with positions they store a product that XLA would otherwise recompute).
    probe = Kernel(
        nngp=jnp.zeros((1, 1, 1), dtype),
        ntk=None,
        cov1=jnp.zeros((1, 1), dtype),
        cov2=None,
        shape1=(1, 1),
        shape2=(1, 1),
        diagonal_spatial=True,
        x1_is_x2=True,
    )
    if tag[0] == "abrelu":
        return abrelu_entries(probe, tag[1], tag[2])
    return erf_entries(probe, tag[1], tag[2], tag[3])


def _merged_where(u: _Lin) -> str:
    return next((a.where for a in u.terms if isinstance(a, _Fn) and a.where), "")


def _is_pl(tag) -> bool:
    return tag is not None and tag[0] == _PL


def _pl_moment(a: _Fn, b: _Fn, q11, q12, q22, t12) -> _Moment:
    """`E[f(u) k(v)]` and `t12 E[f'(u) k'(v)]` for piecewise-linear `f`, `k` with their kinks
    and jumps at 0, in closed form. Writing `f(u) = sum_s (a_s u + c_s) [s u > 0]` over the
    signs `s`, each term is a moment of two half-lines: with `r` the correlation of `s u` and
    `s' v` and `theta = arccos r`, `P(s u > 0, s' v > 0) = (pi - theta) / (2 pi)` (the orthant
    probability, `1/4 + arcsin(r) / (2 pi)`), `E[s u [s u > 0] [s' v > 0]] = sqrt(q11)
    (1 + r) / (2 sqrt(2 pi))`, and `E[s u s' v [..] [..]] = sqrt(q11 q22) (sin theta +
    (pi - theta) r) / (2 pi)` (the arc-cosine kernels of degrees 0 and 1). Where a variance is
    zero that value is `f(0)` (its convention at the jump) times the other's mean."""
    assert a.tag is not None and b.tag is not None
    _, an, ap, cn, cp = a.tag
    _, bn, bp, dn, dp = b.tag
    dtype = q12.dtype
    _, rho = correlation(q11, q12, q22)
    r1, r2 = safe_sqrt(q11), safe_sqrt(q22)
    root = 1 / math.sqrt(2 * math.pi)
    nngp = jnp.zeros_like(q12)
    ntk = None if t12 is None else jnp.zeros_like(q12)
    for s, a_s, c_s in ((-1, an, cn), (1, ap, cp)):
        for s2, b_s, d_s in ((-1, bn, dn), (1, bp, dp)):
            r = s * s2 * rho
            j0 = arccos_kernel_0(r) / 2
            j1 = (1 + r) * (root / 2)
            j2 = arccos_kernel_1(r) / 2
            nngp = nngp + (
                (a_s * b_s * s * s2) * (r1 * r2) * j2
                + (a_s * d_s * s) * r1 * j1
                + (c_s * b_s * s2) * r2 * j1
                + (c_s * d_s) * j0
            )
            if ntk is not None:
                ntk = ntk + (a_s * b_s) * j0
    f0 = jnp.asarray(a.f(jnp.zeros((), dtype)), dtype)
    k0 = jnp.asarray(b.f(jnp.zeros((), dtype)), dtype)
    mean_f = (ap - an) * root * r1 + (cn + cp) / 2
    mean_k = (bp - bn) * root * r2 + (dn + dp) / 2
    z1, z2 = q11 <= 0, q22 <= 0
    nngp = jnp.where(z1 & z2, f0 * k0, jnp.where(z1, f0 * mean_k, jnp.where(z2, mean_f * k0, nngp)))
    if ntk is not None:
        assert t12 is not None
        ntk = t12 * ntk
    return nngp, ntk


def _pl_smooth_moment(a: _Fn, b: _Fn, q11, q12, q22, t12, deg: int) -> _Moment:
    """`E[f(u) k(v)]` and `t12 E[f'(u) k'(v)]` for a piecewise-linear `f` (kink or jump at 0)
    and a smooth `k`: on each half-line of `u = s sqrt(q11) t` (`t > 0`), `v` given `u` is
    `N(s rho sqrt(q22) t, q22 (1 - rho^2))`; the integral over `t` has a smooth integrand on
    `[0, inf)` (Gauss–Legendre on `[0, 9]`, the tail below 1e-18) and the conditional mean of
    `k` is a Gauss–Hermite sum, both exact to rounding for smooth `k`."""
    assert a.tag is not None
    _, an, ap, cn, cp = a.tag
    dtype = q12.dtype
    _, rho = correlation(q11, q12, q22)
    r1, r2 = safe_sqrt(q11), safe_sqrt(q22)
    spread = r2 * safe_sqrt((1 - rho) * (1 + rho))
    t_nodes, t_weights = np.polynomial.legendre.leggauss(2 * deg)
    t_nodes, t_weights = (
        4.5 * (t_nodes + 1),
        4.5 * t_weights * np.exp(-((4.5 * (t_nodes + 1)) ** 2) / 2),
    )
    t_weights = t_weights / math.sqrt(2 * math.pi)
    z_nodes, z_weights = np.polynomial.hermite.hermgauss(deg)
    dk = _derivative(b.f)

    def conditional_mean(fn, mean):
        total = sum(
            float(w) * fn(mean + spread * (math.sqrt(2) * float(z)))
            for z, w in zip(z_nodes, z_weights)
        )
        return total / math.sqrt(math.pi)

    def integrate(with_ntk: bool):
        def body(i, acc):
            t = jnp.asarray(t_nodes, dtype)[i]
            w = jnp.asarray(t_weights, dtype)[i]
            out = []
            for s, a_s, c_s in ((-1, an, cn), (1, ap, cp)):
                mean = s * rho * r2 * t
                if with_ntk:
                    out.append(w * a_s * conditional_mean(dk, mean))
                else:
                    out.append(w * (a_s * s * r1 * t + c_s) * conditional_mean(b.f, mean))
            return acc + out[0] + out[1]

        return lax.fori_loop(0, len(t_nodes), body, jnp.zeros(q12.shape, dtype))

    nngp = integrate(False)
    f0 = jnp.asarray(a.f(jnp.zeros((), dtype)), dtype)
    k_mean = conditional_mean(b.f, jnp.zeros_like(q12))  # E[k(v)] at rho = 0 is its mean
    nngp = jnp.where(q11 <= 0, f0 * k_mean, nngp)
    return nngp, None if t12 is None else t12 * integrate(True)


def _smooth(a: _Fn) -> bool:
    return _kink(a) is None


def _kink(a: _Fn) -> str | None:
    """Where `f` has a kink or a jump, in words, or None when it is smooth at its breaks."""
    if a.breaks is not None and not a.breaks:
        return None
    if a.breaks is None:
        return "a kink or jump at points that cannot be located"
    df = _derivative(a.f)
    for t0 in sorted(a.breaks):
        eps = 1e-6 * max(1.0, abs(t0))
        try:
            t = jnp.asarray([t0 - eps, t0 + eps])
            v, d = np.asarray(a.f(t), float), np.asarray(df(t), float)
        except Exception:  # traced constants: cannot be checked
            continue
        scale = 1.0 + float(np.max(np.abs(v))) + float(np.max(np.abs(d))) * eps
        if abs(v[1] - v[0]) > 1e-4 * scale:
            return f"a jump at {t0:g}"
        if abs(d[1] - d[0]) > 1e-4 * (1.0 + float(np.max(np.abs(d)))):
            return f"a kink at {t0:g}"
    return None


def _check_smooth(a: _Fn, interp) -> None:
    """Raise where `f` has a kink or a jump that only Gauss–Hermite quadrature would see: its
    error there is not small (a quarter of the NTK for a kink, a tenth of the NNGP for a
    jump)."""
    bad = _kink(a)
    if bad is None:
        return
    raise _Unsupported(
        f"`limit` traced `{type(interp.model).__qualname__}.__call__` and found an elementwise "
        f"function (made at {a.where}) with {bad}. Its limit has no closed form here, and "
        f"Gauss–Hermite quadrature is not accurate for kinks and jumps (errors of ~10% in the "
        f"NNGP and ~25% in the NTK), so it is refused rather than approximated. Closed forms "
        f"cover piecewise-linear functions whose only kink or jump is at 0 (relu, leaky_relu, "
        f"abs, steps such as `x > 0` or `heaviside`, sign, and their sums and scalings) and "
        f"smooth functions; shift a threshold into the preceding layer's bias, write the "
        f"function smoothly, or register a rule for the module:\n\n"
        f"    @eqntk.limits.register({type(interp.model).__name__})\n"
        f"    class {type(interp.model).__name__}Rule(eqntk.limits.AbstractRule): ...\n\n"
        f"(`eqntk.monte_carlo_kernel` estimates any module's kernel by sampling)."
    )


def _fn_derivative(a: _Fn) -> Callable:
    """`f'`, taken just right of each break of `f`: at a break (0 is a Gauss–Hermite node)
    autodiff returns one branch's choice (`max(t, 0)` has derivative 0 at 0 in
    `max(t, 0) + log1p(exp(-|t|))`, whose derivative is 1/2 there)."""
    df = _derivative(a.f)
    breaks = a.breaks
    if not breaks:
        return df

    def nudged(z):
        for t0 in breaks:
            z = jnp.where(z == t0, t0 + 1e-9 * max(1.0, abs(t0)), z)
        return df(z)

    return nudged


def _derivative(f: Callable) -> Callable:
    return lambda z: jax.jvp(f, (z,), (jnp.ones_like(z),))[1]


def _mean_derivative(a: _Fn, q, deg: int):
    """`E[f'(g)]` for `g ~ N(0, q)` (the derivative almost everywhere: a jump adds nothing,
    as in the gradient of a finite network)."""
    if _is_pl(a.tag):
        assert a.tag is not None
        return jnp.asarray((a.tag[1] + a.tag[2]) / 2, q.dtype) * jnp.ones_like(q)
    if a.tag is not None and a.tag[0] == "erf":
        return (2 / math.sqrt(math.pi)) / jnp.sqrt(1 + 2 * q)
    nodes, weights = np.polynomial.hermite.hermgauss(deg)
    s = safe_sqrt(2 * q)
    df = _fn_derivative(a)
    total = sum(float(w) * df(s * float(x)) for x, w in zip(nodes, weights))
    return total / math.sqrt(math.pi)


def _regression_factor(a: _Fn, q, deg: int):
    """`E[f(g) g] / Var(g)`, so that `E[f(g) h] = factor * Cov(g, h)` for jointly Gaussian
    `(g, h)` (the regression of `h` on `g`); Stein's lemma makes it `E[f'(g)]` for smooth `f`,
    and it needs no derivative (`f` may jump). At zero variance: `E[f'(g)] = f'(0)`."""
    if _is_pl(a.tag):
        # E[f(g) g] = q (a_neg + a_pos) / 2 + sqrt(q / (2 pi)) (c_pos - c_neg).
        assert a.tag is not None
        _, an, ap, cn, cp = a.tag
        positive = q > 0
        jump = (cp - cn) / jnp.sqrt(2 * math.pi * jnp.where(positive, q, 1))
        return (an + ap) / 2 + jnp.where(positive, jump, 0)
    if a.tag is not None and a.tag[0] == "erf":
        return _mean_derivative(a, q, deg)
    nodes, weights = np.polynomial.hermite.hermgauss(deg)
    s = safe_sqrt(2 * q)
    total = sum(float(w) * a.f(s * float(x)) * (s * float(x)) for x, w in zip(nodes, weights))
    positive = q > 0
    ratio = (total / math.sqrt(math.pi)) / jnp.where(positive, q, 1)
    return jnp.where(positive, ratio, _derivative(a.f)(jnp.zeros_like(q)))


def _bivariate(f, k, q11, q12, q22, t12, deg: int, df=None, dk=None):
    """`E[f(u) k(v)]` and `t12 E[f'(u) k'(v)]` for jointly Gaussian `(u, v)`, by Gauss–Hermite
    quadrature of degree `deg` in each variable (as `nn.Elementwise`)."""
    nodes, weights = np.polynomial.hermite.hermgauss(deg)
    x = jnp.asarray(nodes, q12.dtype)
    w = [float(v) for v in weights]
    _, rho = correlation(q11, q12, q22)
    s1, s2 = safe_sqrt(2 * q11), safe_sqrt(2 * q22)
    a, b = s2 * rho, s2 * safe_sqrt(1 - rho * rho)
    df = _derivative(f) if df is None else df
    dk = _derivative(k) if dk is None else dk

    def integrate(g1, g2):
        def body(i, total):
            outer = w_arr[i] * g1(s1 * x[i])
            inner = sum(wj * g2(a * x[i] + b * float(xj)) for wj, xj in zip(w, nodes))
            return total + outer * inner

        w_arr = jnp.asarray(w, q12.dtype)
        return lax.fori_loop(0, deg, body, jnp.zeros(q12.shape, q12.dtype)) / math.pi

    nngp = integrate(f, k)
    return nngp, None if t12 is None else t12 * integrate(df, dk)


# ---------------------------------------------------------------------------------------------
# Structural (linear) primitives.


def _spatial(interp, eqn, x: _Lin, fn: Callable, out_shape) -> _Lin:
    return _Lin.of(_SpatialMap(x, fn, tuple(out_shape)))


def _data_only(interp, eqn, ins) -> _Lin:
    x = ins[0]
    if not isinstance(x, _Lin):
        raise _unsupported(eqn, "unexpected operands.", interp)
    return x


def _reduce_sum(interp, eqn, ins):
    x = _data_only(interp, eqn, ins)
    axes = tuple(eqn.params["axes"])
    if 0 in axes:
        raise _unsupported(
            eqn,
            "a sum or mean over the channel axis (axis 0); in the limit channels are "
            "infinitely many. Sum over positions only, or end with an affine layer.",
            interp,
        )
    out = eqn.outvars[0].aval.shape
    return _spatial(interp, eqn, x, lambda z: jnp.sum(z, axis=tuple(a - 1 for a in axes)), out)


def _channel_kept(interp, eqn, x: _Lin, out_shape) -> None:
    if not out_shape or out_shape[0] != x.shape[0]:
        raise _unsupported(
            eqn,
            f"it changes the channel axis (axis 0, size {x.shape[0]}) to shape {out_shape}; "
            f"keep the channels first and whole (only positions may be sliced, reshaped or "
            f"transposed).",
            interp,
        )


def _slice(interp, eqn, ins):
    x = _data_only(interp, eqn, ins)
    p = eqn.params
    out = eqn.outvars[0].aval.shape
    _channel_kept(interp, eqn, x, out)
    start, limit = tuple(p["start_indices"]), tuple(p["limit_indices"])
    strides = p["strides"]
    if start[0] != 0 or (strides is not None and strides[0] != 1):
        _channel_kept(interp, eqn, x, ())
    st = None if strides is None else tuple(strides[1:])
    return _spatial(interp, eqn, x, lambda z: lax.slice(z, start[1:], limit[1:], st), out)


def _pad(interp, eqn, ins):
    x, value = ins
    if not isinstance(x, _Lin) or not isinstance(value, _Static) or not _is_zero(value.value):
        raise _unsupported(eqn, "only zero padding of positions is supported.", interp)
    config = eqn.params["padding_config"]
    if tuple(config[0]) != (0, 0, 0):
        _channel_kept(interp, eqn, x, ())
    out = eqn.outvars[0].aval.shape
    return _spatial(interp, eqn, x, lambda z: lax.pad(z, jnp.zeros((), z.dtype), config[1:]), out)


def _transpose(interp, eqn, ins):
    x = _data_only(interp, eqn, ins)
    perm = tuple(eqn.params["permutation"])
    if perm[0] != 0:
        _channel_kept(interp, eqn, x, ())
    return _spatial(
        interp,
        eqn,
        x,
        lambda z: jnp.transpose(z, [p - 1 for p in perm[1:]]),
        eqn.outvars[0].aval.shape,
    )


def _reshape(interp, eqn, ins):
    x = ins[0]
    if not isinstance(x, _Lin):
        raise _unsupported(eqn, "unexpected operands.", interp)
    out = tuple(eqn.outvars[0].aval.shape)
    if out == (math.prod(x.shape),) and len(x.shape) > 1:
        return _Lin.of(_Flatten(x))
    if out == x.shape:
        return x
    _channel_kept(interp, eqn, x, out)
    return _spatial(interp, eqn, x, lambda z: jnp.reshape(z, out[1:]), out)


def _squeeze(interp, eqn, ins):
    x = _data_only(interp, eqn, ins)
    dims = tuple(eqn.params["dimensions"])
    if 0 in dims:
        _channel_kept(interp, eqn, x, ())
    out = eqn.outvars[0].aval.shape
    return _spatial(interp, eqn, x, lambda z: jnp.squeeze(z, [d - 1 for d in dims]), out)


def _broadcast_in_dim(interp, eqn, ins):
    x = _data_only(interp, eqn, ins)
    p = eqn.params
    out = tuple(p["shape"])
    dims = tuple(p["broadcast_dimensions"])
    if not dims or dims[0] != 0 or out[0] != x.shape[0]:
        _channel_kept(interp, eqn, x, ())
    return _spatial(
        interp,
        eqn,
        x,
        lambda z: lax.broadcast_in_dim(z, out[1:], tuple(d - 1 for d in dims[1:])),
        out,
    )


def _rev(interp, eqn, ins):
    x = _data_only(interp, eqn, ins)
    dims = tuple(eqn.params["dimensions"])
    if 0 in dims:
        # Reversing the channels permutes exchangeable channels: the kernel is unchanged, but
        # the correlations with the unreversed value would not be.
        _channel_kept(interp, eqn, x, ())
    return _spatial(interp, eqn, x, lambda z: lax.rev(z, tuple(d - 1 for d in dims)), x.shape)


def _concatenate(interp, eqn, ins):
    dim = eqn.params["dimension"]
    if not all(isinstance(x, _Lin) for x in ins):
        raise _unsupported(eqn, "concatenation with constants is not supported.", interp)
    if dim == 0:
        return _Lin.of(_Concat(tuple(ins)))
    out = tuple(eqn.outvars[0].aval.shape)
    total = None
    offset = 0
    for x in ins:
        size = x.shape[dim]
        config = [(0, 0, 0)] * (len(out) - 1)
        config[dim - 1] = (offset, out[dim] - offset - size, 0)
        offset += size
        fn = lambda z, c=tuple(config): lax.pad(z, jnp.zeros((), z.dtype), c)
        part = _Lin.of(_SpatialMap(x, fn, out))
        total = part if total is None else total.plus(part)
    return total


def _stack(interp, eqn, ins):
    axis = eqn.params["axis"]
    if not all(isinstance(x, _Lin) for x in ins) or axis == 0:
        raise _unsupported(
            eqn,
            "only data values stacked along a new axis after the channels (axis >= 1) are "
            "supported (stacking along axis 0 moves the channel axis).",
            interp,
        )
    out = tuple(eqn.outvars[0].aval.shape)
    total = None
    for i, x in enumerate(ins):
        # Position i of the new axis holds this value; the others hold zeros.
        fn = lambda z, i=i: jnp.stack(
            [z if j == i else jnp.zeros_like(z) for j in range(len(ins))], axis=axis - 1
        )
        part = _Lin.of(_SpatialMap(x, fn, out))
        total = part if total is None else total.plus(part)
    return total


_STRUCTURAL = {
    "stack": _stack,
    "reduce_sum": _reduce_sum,
    "slice": _slice,
    "pad": _pad,
    "transpose": _transpose,
    "reshape": _reshape,
    "squeeze": _squeeze,
    "broadcast_in_dim": _broadcast_in_dim,
    "rev": _rev,
    "concatenate": _concatenate,
}

_ELEMENTWISE = _SELECTIONS | {
    "add",
    "add_any",
    "sub",
    "neg",
    "mul",
    "div",
    "max",
    "min",
    "abs",
    "sign",
    "exp",
    "exp2",
    "log",
    "log1p",
    "expm1",
    "tanh",
    "logistic",
    "sin",
    "cos",
    "tan",
    "erf",
    "erfc",
    "erf_inv",
    "sqrt",
    "rsqrt",
    "cbrt",
    "integer_pow",
    "pow",
    "square",
    "convert_element_type",
    "copy",
    "copy_p",
    "atan",
    "asinh",
    "sinh",
    "cosh",
    "clamp",
    "nextafter",
    "floor",
    "ceil",
    "round",
    "is_finite",
    "reduce_precision",
}


# ---------------------------------------------------------------------------------------------
# The rule.


class ProgramRule(AbstractRule):
    """The kernel rule of an Equinox module without a rule of its own: its `__call__` traced
    and interpreted on kernels (see `eqntk.limits._program`). It takes the full spatial
    covariance of its input and returns the full layout."""

    def requirements(self, layer, wanted):
        return Requirements(diagonal_spatial=False)

    def __call__(self, layer, k: Kernel, wanted) -> Kernel:
        if k.mask1 is not None or k.mask2 is not None:
            raise ValueError(
                f"`{type(layer).__name__}` is interpreted from its code, which does not take "
                f"masked inputs (`mask1`/`mask2`)."
            )
        # Constants of the program (literals, scalars, flags) stay concrete under `jit`, so that
        # they can be compared and folded; kernels and traced parameters are staged as usual.
        with jax.ensure_compile_time_eval():
            return self._interpret(layer, k)

    def _interpret(self, layer, k: Kernel) -> Kernel:
        wrapped, layers = _wrap(layer)
        params, static = eqx.partition(wrapped, eqx.is_array)
        leaves, treedef = jtu.tree_flatten(params)

        def call(leaves, x):
            return eqx.combine(jtu.tree_unflatten(treedef, leaves), static)(x)

        x_aval = jax.ShapeDtypeStruct(tuple(k.shape1), k.nngp.dtype)
        closed = jax.make_jaxpr(call)(leaves, x_aval)
        source = _Source(k, k.is_gaussian, k.is_gaussian, name="")
        interp = _Interpreter(layer, layers, k)
        args = [_Static(v, ("param", i)) for i, v in enumerate(leaves)] + [_Lin.of(source)]
        outs = interp.run(closed, args)
        if len(outs) != 1 or not isinstance(outs[0], _Lin):
            raise NotImplementedError(
                f"`limit` of `{type(layer).__name__}` needs `__call__` to return one array "
                f"computed from its input, got {len(outs)} output(s)."
            )
        out = outs[0]
        n = len(out.shape) - 1
        k12, t12 = interp.lin_moment(out, out, "12")
        cov1 = interp.lin_moment(out, out, "11")[0]
        cov2 = None if k.x1_is_x2 else _interleave(interp.lin_moment(out, out, "22")[0], 1, n)
        shape = out.shape if out.shape else (1,)
        return k.replace(
            nngp=_interleave(k12, 2, n),
            ntk=None if t12 is None else _interleave(t12, 2, n),
            cov1=_interleave(cov1, 1, n),
            cov2=cov2,
            shape1=shape,
            shape2=shape,
            diagonal_spatial=False,
            is_gaussian=out.gaussian,
        )


_registry.program_rule.append(ProgramRule())
