"""The rule registry: which kernel rule `limit` applies to which layer class."""

import abc
import functools
import types
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar, cast

import equinox as eqx
import jax

from ._kernel import Kernel
from ._masking import remask
from ._spatial import to_diagonal_spatial


class Requirements(eqx.Module):
    """What a layer's output kernel must hold, as seen from the layers above it.

    `limit` computes these from the output of the network down to its input before it computes
    any kernel, so that each layer gets the cheapest kernel layout that still lets every layer
    above it work.

    **Fields:**

    - `diagonal_spatial`: `True` when only the spatial diagonal of the covariance
      (`i == i'`, `j == j'`, ...) is needed (see [`eqntk.Kernel`][] for the layouts).

    **Example:**

    ```python
    from eqntk.limits import Requirements

    wanted = Requirements(diagonal_spatial=True)
    assert wanted.merge(Requirements(diagonal_spatial=False)).diagonal_spatial is False
    ```
    """

    diagonal_spatial: bool = eqx.field(static=True, default=False)

    def merge(self, other: "Requirements") -> "Requirements":
        """The requirements that satisfy both `self` and `other` (e.g. two branches of a fan-out).

        **Arguments:**

        - `other`: more requirements on the same kernel.

        **Returns:**

        The combined [`eqntk.limits.Requirements`][].

        **Example:**

        ```python
        from eqntk.limits import Requirements

        both = Requirements(True).merge(Requirements(True))
        assert both.diagonal_spatial
        ```
        """
        return Requirements(diagonal_spatial=self.diagonal_spatial and other.diagonal_spatial)


# What flows between layers: one Kernel per stream (a tuple after `FanOut`), and the matching
# Requirements. A single Requirements for a tuple of streams applies to every stream: a fan-in
# layer does not know how many streams will arrive and asks the same of each.
KernelTree = Kernel | tuple["KernelTree", ...]
RequirementsTree = Requirements | tuple["RequirementsTree", ...]


_Layer = TypeVar("_Layer", contravariant=True)


class AbstractRule(eqx.Module, Generic[_Layer]):
    """The kernel rule of one layer family: how a layer maps its input kernel to its output.

    The rule is generic over the layer type it handles (`AbstractRule[Dense]`), so that a type
    checker sees the layer's fields. A rule has two parts, both pure functions of the layer and
    their argument:

    - `requirements(layer, wanted)`: given what the layers above need of this layer's output
      kernel (`wanted`), return what this layer needs of its input kernel. Most layers pass
      `wanted` through; `Flatten` only needs the spatial diagonal; pooling needs the full
      spatial covariance.
    - `__call__(layer, k, wanted)`: the forward map. `k` arrives in the layout that
      `requirements` asked for. The result may hold more than `wanted` (e.g. a full spatial
      covariance where the diagonal suffices); `limit` then drops what is not needed. A rule that
      can compute only what is wanted should do so, to save work.

    This class is for layers that take one stream and make one (a `Kernel` in, a `Kernel` out);
    layers that make, take or route several streams (`FanOut`, `Parallel`, the fan-in layers,
    containers) subclass [`eqntk.limits.AbstractStreamsRule`][] instead.

    Rules are registered for a layer class with [`eqntk.limits.register`][]. A rule for a
    container layer (`Sequential`, `Parallel`) calls [`eqntk.limits.apply`][] and
    [`eqntk.limits.requirements`][] on its children.

    [`eqntk.limits.apply`][] checks what a rule returns: a `Kernel` (or a tuple of kernels)
    with the batch sizes `(N1, N2)` of its input, masks kept where the input had masks (unless
    no spatial axis is left), and an NTK exactly when the input has one.

    **Example:**

    ```python
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn
    from eqntk.limits import AbstractRule, Kernel, Requirements, register

    class Double(eqx.Module):
        def __call__(self, x, *, key=None):
            return 2 * x

    @register(Double)
    class DoubleRule(AbstractRule[Double]):
        def requirements(self, layer: Double, wanted: Requirements) -> Requirements:
            return wanted

        def __call__(self, layer: Double, k: Kernel, wanted: Requirements) -> Kernel:
            return k.map_covariances(lambda a: 4 * a)

    model = nn.Sequential([nn.Dense(2, 4, key=jr.key(0)), Double()])
    x = jnp.ones((3, 2))
    assert jnp.allclose(eqntk.limit(model)(x, get="nngp"), 4.0)
    ```
    """

    # Kept for rules written before `AbstractStreamsRule`: `True` hands the rule the kernel
    # trees unchecked, as for a streams rule.
    takes_streams: ClassVar[bool] = False

    @abc.abstractmethod
    def requirements(self, layer: _Layer, wanted: Requirements) -> Requirements:
        """Return what `layer` needs of its input kernel, given `wanted` of its output."""

    @abc.abstractmethod
    def __call__(self, layer: _Layer, k: Kernel, wanted: Requirements) -> Kernel:
        """Return the kernel of `layer`'s output, given the kernel `k` of its input."""


class AbstractStreamsRule(eqx.Module, Generic[_Layer]):
    """The kernel rule of a layer that makes, joins or routes streams (a tuple of kernels, made
    by `FanOut`): the same contract as [`eqntk.limits.AbstractRule`][], on trees.

    `requirements` and `__call__` take and return either one `Requirements`/`Kernel` or a tuple
    of them (one per stream). A single `Requirements` for a tuple of streams applies to every
    stream: a fan-in layer does not know how many streams will arrive and asks the same of each.

    **Example:**

    ```python
    import equinox as eqx
    import jax.numpy as jnp
    import jax.random as jr
    import eqntk
    from eqntk import nn
    from eqntk.limits import AbstractStreamsRule, register

    class Swap(eqx.Module):
        def __call__(self, xs, *, key=None):
            return xs[::-1]

    @register(Swap)
    class SwapRule(AbstractStreamsRule[Swap]):
        def requirements(self, layer, wanted):
            return wanted[::-1] if isinstance(wanted, tuple) else wanted

        def __call__(self, layer, k, wanted):
            assert isinstance(k, tuple)
            return k[::-1]

    dense = nn.Dense(3, 4, key=jr.key(0))
    model = nn.Sequential([dense, nn.FanOut(2), Swap(), nn.FanInSum()])
    assert eqntk.limit(model)(jnp.ones((2, 3)), get="nngp").shape == (2, 2)
    ```
    """

    takes_streams: ClassVar[bool] = True

    @abc.abstractmethod
    def requirements(self, layer: _Layer, wanted: RequirementsTree) -> RequirementsTree:
        """Return what `layer` needs of its input kernel(s), given `wanted` of its output."""

    @abc.abstractmethod
    def __call__(self, layer: _Layer, k: KernelTree, wanted: RequirementsTree) -> KernelTree:
        """Return the kernel(s) of `layer`'s output, given the kernel(s) `k` of its input."""


# What the registry holds: a rule of either kind, for any layer type.
AnyRule = AbstractRule[Any] | AbstractStreamsRule[Any]


_RULES: dict[type, AnyRule] = {}
# The rule of modules without one: set by `_program` (which imports this module).
program_rule: list[AnyRule] = []

_R = TypeVar("_R", bound=type[AbstractRule[Any]] | type[AbstractStreamsRule[Any]])


def register(*layer_classes: type) -> Callable[[_R], _R]:
    """Register a rule class as the kernel rule of one or more layer classes.

    The rule applies to the given classes and to their subclasses, unless a subclass has a rule
    of its own. Registering a class again replaces its rule, so a user can also override the
    rules that eqntk ships.

    **Arguments:**

    - `*layer_classes`: the layer classes (any `eqx.Module` subclasses, including the layers of
      `equinox.nn`).

    **Returns:**

    A class decorator for a subclass of [`eqntk.limits.AbstractRule`][]; it returns the class
    unchanged.

    **Example:**

    ```python
    import equinox as eqx
    from eqntk.limits import AbstractRule, register

    class Negate(eqx.Module):
        def __call__(self, x, *, key=None):
            return -x

    @register(Negate)
    class NegateRule(AbstractRule):
        def requirements(self, layer, wanted):
            return wanted

        def __call__(self, layer, k, wanted):
            return k  # covariances are unchanged by a sign flip
    ```
    """
    if not layer_classes:
        raise TypeError("`register` needs at least one layer class.")
    for cls in layer_classes:
        if not isinstance(cls, type):
            raise TypeError(f"`register` takes layer classes, got {cls!r}.")

    def decorator(rule_class: _R) -> _R:
        if not (
            isinstance(rule_class, type)
            and issubclass(rule_class, AbstractRule | AbstractStreamsRule)
        ):
            raise TypeError(
                f"`register` decorates subclasses of `eqntk.limits.AbstractRule` or "
                f"`eqntk.limits.AbstractStreamsRule`, "
                f"got {rule_class!r}."
            )
        rule = rule_class()
        for cls in layer_classes:
            _RULES[cls] = rule
        return rule_class

    return decorator


def rule_for(layer: Any) -> AnyRule:
    """Return the rule registered for `layer`'s class (or its nearest registered base class).

    **Arguments:**

    - `layer`: a layer instance.

    **Returns:**

    The registered [`eqntk.limits.AbstractRule`][] instance. An Equinox module without a rule
    gets the rule that traces its `__call__` and interprets it on kernels (it raises, naming
    the operation and showing how to register a rule, when the code has no limit it knows).

    **Raises:**

    `NotImplementedError`, naming the class and showing how to register a rule, for an object
    that is not an Equinox module and has no rule; `TypeError` for a plain function (it points
    to [`eqntk.nn.Elementwise`][]).

    **Example:**

    ```python
    import jax.random as jr
    from eqntk import nn
    from eqntk.limits import rule_for

    print(type(rule_for(nn.Relu())).__name__)  # ReluRule
    ```
    """
    rule = registered_rule(type(layer))
    if rule is not None:
        return rule
    # An Equinox module without a rule of its own: its `__call__` is interpreted (`_program`).
    if isinstance(layer, eqx.Module) and program_rule:
        return program_rule[0]
    name = type(layer).__name__
    if _is_plain_function(layer):
        raise TypeError(
            f"`limit` takes layers (Equinox modules with a kernel rule), got the plain function "
            f"{_describe_function(layer)}. For a scalar nonlinearity applied elementwise, use "
            f"`eqntk.nn.Elementwise(fn)` (e.g. `nn.Elementwise(jnp.tanh)`): its kernel is "
            f"computed by quadrature. `equinox.nn.Lambda(fn)` of an elementwise function has "
            f"the same kernel."
        )
    if isinstance(layer, eqx.nn.Lambda):
        raise NotImplementedError(
            f"`limit` has no kernel rule for `equinox.nn.Lambda` (here wrapping "
            f"{_describe_function(layer.fn)}): a function need not act elementwise. For a "
            f"scalar nonlinearity applied elementwise, use `eqntk.nn.Elementwise(fn)`."
        )
    raise NotImplementedError(
        f"`limit` has no kernel rule for layers of type "
        f"`{type(layer).__module__}.{type(layer).__qualname__}`. "
        f"Register one with\n\n"
        f"    @eqntk.limits.register({name})\n"
        f"    class {name}Rule(eqntk.limits.AbstractRule):\n"
        f"        def requirements(self, layer, wanted): ...\n"
        f"        def __call__(self, layer, k, wanted): ...\n"
    )


def registered_rule(layer_class: type) -> AnyRule | None:
    """The rule registered for `layer_class` or its nearest registered base class, or `None`."""
    for cls in layer_class.__mro__:
        rule = _RULES.get(cls)
        if rule is not None:
            return rule
    return None


def _is_plain_function(layer: Any) -> bool:
    if isinstance(layer, eqx.Module) or isinstance(layer, type):
        return False
    return isinstance(
        layer,
        types.FunctionType
        | types.BuiltinFunctionType
        | types.MethodType
        | functools.partial
        | jax.custom_jvp
        | jax.custom_vjp,
    ) or (callable(layer) and type(layer).__name__ in ("PjitFunction", "CompiledFunction"))


def _describe_function(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"`{name}`" if name else repr(fn)


def requirements(layer: Any, wanted: RequirementsTree) -> RequirementsTree:
    """What `layer` needs of its input kernel so that its output satisfies `wanted`.

    **Arguments:**

    - `layer`: a layer with a registered rule.
    - `wanted`: the requirements on the layer's output kernel.

    **Returns:**

    The requirements on the layer's input kernel.

    **Example:**

    ```python
    from eqntk import nn
    from eqntk.limits import Requirements, requirements

    assert requirements(nn.Flatten(), Requirements(False)).diagonal_spatial
    ```
    """
    rule = rule_for(layer)
    if rule.takes_streams:
        return cast(AbstractStreamsRule[Any], rule).requirements(layer, wanted)
    return cast(AbstractRule[Any], rule).requirements(layer, _one_stream(layer, wanted))


def _one_stream(layer: Any, wanted: RequirementsTree) -> Requirements:
    """`wanted` of a layer that makes one stream, which cannot satisfy several."""
    if isinstance(wanted, tuple):
        raise ValueError(
            f"`{type(layer).__name__}` makes one stream, but the layers after it take "
            f"{len(wanted)} streams: split it with `nn.FanOut({len(wanted)})` first."
        )
    return wanted


def apply(layer: Any, k: KernelTree, wanted: RequirementsTree) -> KernelTree:
    """Apply `layer`'s rule to the kernel `k`, and keep only what `wanted` asks for.

    **Arguments:**

    - `layer`: a layer with a registered rule.
    - `k`: the kernel of the layer's input, in the layout that
      [`eqntk.limits.requirements`][] asked for.
    - `wanted`: the requirements on the layer's output kernel.

    **Returns:**

    The kernel of the layer's output.

    **Example:**

    ```python
    import jax.numpy as jnp
    import eqntk
    from eqntk import nn
    from eqntk.limits import Requirements, apply

    k = eqntk.limit(nn.Identity())(jnp.ones((2, 3)))
    assert apply(nn.Identity(), k, Requirements()) is k
    ```
    """
    rule = rule_for(layer)
    out: KernelTree
    if rule.takes_streams:
        out = cast(AbstractStreamsRule[Any], rule)(layer, k, wanted)
    else:
        if isinstance(k, tuple):
            raise ValueError(
                f"`{type(layer).__name__}` received {len(k)} streams (made by `FanOut`), but "
                f"it takes one. Join the streams first with a fan-in layer (`nn.FanInSum`, "
                f"`nn.FanInProd`, `nn.FanInConcat`), or give each stream its own layers with "
                f"`nn.Parallel`."
            )
        out = cast(AbstractRule[Any], rule)(layer, k, _one_stream(layer, wanted))
    _check_output(rule, layer, k, out)
    # Masked positions stay zero whatever the rule did (e.g. a bias added there), so rules only
    # have to say how masks move when they move positions.
    out = jax.tree_util.tree_map(remask, out, is_leaf=lambda z: isinstance(z, Kernel))
    return conform(out, wanted)


def _kernels(k: Any) -> list[Any]:
    return [x for ki in k for x in _kernels(ki)] if isinstance(k, tuple) else [k]


def _check_output(rule: AnyRule, layer: Any, k: KernelTree, out: Any) -> None:
    """Check that a rule kept what every rule must keep: the batch sizes, the masks and whether
    the NTK is computed."""
    where = f"The kernel rule `{type(rule).__qualname__}` (of `{type(layer).__name__}`)"
    inputs, outputs = _kernels(k), _kernels(out)
    if not outputs or not all(isinstance(o, Kernel) for o in outputs):

        def described(o: Any) -> str:
            if isinstance(o, jax.Array):  # a traced or concrete array alike
                return f"an array of shape {o.shape}"
            return type(o).__name__

        got = [described(o) for o in outputs] if isinstance(out, tuple) else described(out)
        raise TypeError(f"{where} must return a `Kernel` or a tuple of kernels, got {got}.")
    first = inputs[0]
    n1, n2 = first.nngp.shape[:2]
    has_ntk = first.ntk is not None
    has_mask1 = any(ki.mask1 is not None for ki in inputs)
    has_mask2 = any(ki.mask2 is not None for ki in inputs)
    for o in outputs:
        problems = []
        if tuple(o.nngp.shape[:2]) != (n1, n2):
            problems.append(
                f"`nngp` must start with the batch sizes (N1, N2) = {(n1, n2)} of its input, "
                f"got shape {o.nngp.shape}"
            )
        if o.cov1.shape[:1] != (n1,):
            problems.append(f"`cov1` must start with N1 = {n1}, got shape {o.cov1.shape}")
        if o.cov2 is not None and o.cov2.shape[:1] != (n2,):
            problems.append(f"`cov2` must start with N2 = {n2}, got shape {o.cov2.shape}")
        if (o.ntk is not None) != has_ntk:
            problems.append(
                "`ntk` must be computed exactly when the input has one (input: "
                f"{'an NTK' if has_ntk else 'no NTK'}; output: "
                f"{'an NTK' if o.ntk is not None else 'None'})"
            )
        if o.x1_is_x2 != first.x1_is_x2:
            problems.append(f"`x1_is_x2` must stay {first.x1_is_x2}, got {o.x1_is_x2}")
        # Layers that remove every spatial axis (global pooling, `Flatten`) end the masks.
        for name, had in (("mask1", has_mask1), ("mask2", has_mask2)):
            if had and o.spatial_ndim > 0 and getattr(o, name) is None:
                problems.append(
                    f"`{name}` must be kept (the input is masked; map it along when the "
                    f"positions change, e.g. `k.replace({name}=...)`), got None"
                )
        if problems:
            raise ValueError(f"{where} returned a wrong kernel: " + "; ".join(problems) + ".")


def conform(k: KernelTree, wanted: RequirementsTree) -> KernelTree:
    """Drop what `k` holds beyond `wanted` (the off-diagonal spatial entries)."""
    if isinstance(k, tuple):
        if not isinstance(wanted, tuple):
            return tuple(conform(ki, wanted) for ki in k)
        if len(wanted) != len(k):
            raise ValueError(
                f"A layer produced {len(k)} streams where {len(wanted)} were expected."
            )
        return tuple(conform(ki, wi) for ki, wi in zip(k, wanted))
    if isinstance(wanted, tuple):
        raise ValueError(f"A layer produced 1 stream where {len(wanted)} were expected.")
    if wanted.diagonal_spatial and not k.diagonal_spatial:
        return to_diagonal_spatial(k)
    return k
