"""The documentation: every public object is in the API reference, every docstring example and
every code block of the guides runs, and the site builds with `mkdocs build --strict`."""

import importlib
import importlib.util
import inspect
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest


ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PUBLIC_MODULES = ("eqntk", "eqntk.nn", "eqntk.limits", "eqntk.dynamics", "eqntk.empirical")
PUBLIC_MODULES += ("eqntk.batching", "eqntk.features", "eqntk.nn.rules")
PYTHON_BLOCK = re.compile(r"^[ ]*```python\n(.*?)^[ ]*```", re.DOTALL | re.MULTILINE)


def _public_objects() -> dict[str, object]:
    objects = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in dir(module):
            value = getattr(module, name)
            if not name.startswith("_") and not inspect.ismodule(value):
                objects[f"{module_name}.{name}"] = value
    return objects


def _documented_paths() -> set[str]:
    """Paths rendered with `::: path`, plus the alias anchors `[](){#path}` beside them."""
    paths = set()
    for page in (DOCS / "api").glob("*.md"):
        text = page.read_text()
        paths.update(re.findall(r"^::: ([\w.]+)", text, re.MULTILINE))
        paths.update(re.findall(r"^\[\]\(\)\{#([\w.]+)\}", text, re.MULTILINE))
    return paths


def test_every_public_object_is_in_the_reference():
    missing = sorted(set(_public_objects()) - _documented_paths())
    assert not missing, f"add these to docs/api/*.md: {missing}"


def test_reference_names_exist():
    public = set(_public_objects()) | set(PUBLIC_MODULES)
    unknown = sorted(_documented_paths() - public)
    assert not unknown, f"docs/api/*.md documents names that are not public: {unknown}"


LINK = re.compile(r"\[`(eqntk[\w.]*)`\]\[\]")


def _docstrings() -> dict[str, str]:
    """The docstring of each public class or function, with those of its public methods."""
    texts = {}
    seen = set()
    for path, value in sorted(_public_objects().items()):
        if id(value) in seen or not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        seen.add(id(value))
        parts = [inspect.getdoc(value) or ""]
        if inspect.isclass(value):
            for name, member in vars(value).items():
                if (name in ("__init__", "__call__") or not name.startswith("_")) and callable(
                    member
                ):
                    parts.append(inspect.getdoc(member) or "")
        texts[path] = "\n".join(parts)
    return texts


DOCSTRINGS = _docstrings()
DOCSTRING_EXAMPLES = {path: PYTHON_BLOCK.findall(text) for path, text in DOCSTRINGS.items()}


def _run(source: str) -> None:
    # The examples are written for users' default JAX settings, not this suite's strict ones.
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(compile(source, "<example>", "exec"), {"__name__": "__docs__"})


def test_every_public_object_has_an_example():
    """Each object's docstring has a runnable example, or the object is a result type that is
    linked to or from an object with one (e.g. a predictor returned by a documented function)."""
    objects = _public_objects()
    covered = {path for path, blocks in DOCSTRING_EXAMPLES.items() if blocks}
    changed = True
    while changed:
        changed = False
        for path, text in DOCSTRINGS.items():
            if path in covered:
                continue
            links = {m.removesuffix(".__call__") for m in LINK.findall(text)}
            linked_from = any(
                path in {m.removesuffix(".__call__") for m in LINK.findall(DOCSTRINGS[other])}
                for other in covered
            )
            if linked_from or any(
                objects.get(link) is objects[c] for link in links for c in covered
            ):
                covered.add(path)
                changed = True
    without = sorted(set(DOCSTRINGS) - covered)
    assert not without, f"public objects without a ```python example: {without}"


@pytest.mark.parametrize("path", sorted(p for p, b in DOCSTRING_EXAMPLES.items() if b))
def test_docstring_example_runs(path):
    for block in DOCSTRING_EXAMPLES[path]:
        _run(inspect.cleandoc("\n" + block) if block.startswith(" ") else block)


GUIDES = sorted(p for p in DOCS.rglob("*.md") if "api" not in p.parts)


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: str(p.relative_to(DOCS)))
def test_guide_code_runs(page, tmp_path, monkeypatch):
    """The python blocks of a guide page run in order, as one session (like a notebook)."""
    blocks = PYTHON_BLOCK.findall(page.read_text())
    monkeypatch.chdir(tmp_path)  # blocks that save figures write here
    _run("\n".join(blocks))


def test_readme_code_runs(tmp_path, monkeypatch):
    """The README's tour runs as written, as one session."""
    blocks = PYTHON_BLOCK.findall((ROOT / "README.md").read_text())
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    _run("\n".join(blocks))


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed (it comes with the `docs` extra: pip install -e '.[docs]')",
)
def test_mkdocs_build_strict(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"NO_MKDOCS_2_WARNING": "1", **os.environ},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "limits" / "index.html").exists()
