"""The package's folders are its architecture: the HTTP side and the model side share only the core,
and no module imports itself back through others. Read from the source (every import, also those
inside functions), so a drift fails here before anyone draws a diagram. And each fact the code
states has one home: the tests below find a second one."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest
import yaml

import serve_app
from serve_app.imaging import CROP_SIZE, IMAGE_SUFFIXES
from serve_app.settings import BACKENDS, SHARED_IMAGES, BatchSettings

PACKAGE = Path(serve_app.__file__).parent
REPO = PACKAGE.parent
CORE = {"serve_app", "serve_app.__main__", "serve_app.app", "serve_app.settings", "serve_app.errors",
        "serve_app.labels", "serve_app.imaging", "serve_app.wire", "serve_app.metric_buckets", "serve_app.data"}

pytestmark = pytest.mark.fast  # in process and quick: `make test-fast`


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


GRAPH = {}
_MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}
for _path in PACKAGE.rglob("*.py"):
    GRAPH[module_name(_path)] = imports_of(_path, _MODULES) - {module_name(_path)}


def side(module: str) -> str:
    return "core" if module in CORE else module.split(".")[1]


def test_every_module_belongs_to_the_core_or_one_folder():
    assert {side(module) for module in GRAPH} == {"core", "http", "model", "launch"}


@pytest.mark.parametrize("this, that", [("http", "model"), ("model", "http"), ("http", "launch"), ("model", "launch")])
def test_a_side_imports_nothing_from_another(this, that):
    crossing = {module: sorted(m for m in imported if side(m) == that)
                for module, imported in GRAPH.items() if side(module) == this}
    assert not {module: found for module, found in crossing.items() if found}


def test_the_core_imports_neither_side_except_where_it_composes_them():
    composers = {"serve_app.app", "serve_app.__main__"}  # the application builder and the command line
    leaking = {module: sorted(m for m in imported if side(m) != "core")
               for module, imported in GRAPH.items() if module in CORE - composers}
    assert not {module: found for module, found in leaking.items() if found}


def test_no_module_imports_itself_back_through_others():
    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(GRAPH[start])
        while todo:
            module = todo.pop()
            if module not in seen:
                seen.add(module)
                todo += GRAPH.get(module, ())
        return seen

    circles = sorted(module for module in GRAPH if module in reaches(module))
    assert not circles, f"import circles through {circles}"


# ---- one home for each fact ------------------------------------------------------------------------


def code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """The module's numbers and strings as code states them (comments are not tokens of these kinds;
    docstrings are left out)."""
    tokens, previous = [], tokenize.NEWLINE
    for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
        is_docstring = token.type == tokenize.STRING and previous in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT)
        if token.type in (tokenize.NUMBER, tokenize.STRING) and not is_docstring:
            tokens.append(token)
        if token.type not in (tokenize.COMMENT,):
            previous = token.type
    return tokens


def modules_stating(predicate) -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py") if any(predicate(t) for t in code_tokens(path))}


def files_stating(predicate, *folders: str) -> set[str]:
    """The same over the repository's other Python (the benchmarks, the tests), by path."""
    return {str(path.relative_to(REPO)) for folder in folders for path in (REPO / folder).rglob("*.py")
            if any(predicate(t) for t in code_tokens(path))}


def test_the_crop_size_is_stated_once():
    assert modules_stating(lambda t: t.type == tokenize.NUMBER and t.string == str(CROP_SIZE)) == {"serve_app.imaging"}


def test_the_photo_suffixes_are_stated_once():
    suffixes = {f'"{suffix}"' for suffix in IMAGE_SUFFIXES} | {f"'{suffix}'" for suffix in IMAGE_SUFFIXES}
    assert modules_stating(lambda t: t.string.lower() in suffixes) == {"serve_app.imaging"}
    patterns = {f"*{suffix}" for suffix in IMAGE_SUFFIXES}
    globbing = files_stating(lambda t: t.type == tokenize.STRING and t.string.strip("\"'").lower() in patterns,
                             "benchmarks", "tests")
    assert not globbing, f"list photos with serve_app.imaging.image_files: {globbing}"


def test_the_shared_photos_folder_is_named_once():
    def names_it(token: tokenize.TokenInfo) -> bool:
        return token.type == tokenize.STRING and token.string.strip("\"'") == SHARED_IMAGES.parent.name

    assert modules_stating(names_it) == {"serve_app.settings"}
    assert not files_stating(names_it, "benchmarks", "tests"), "take serve_app.settings.SHARED_IMAGES"


def test_artifact_files_and_protocol_platforms_live_in_the_backend_registry():
    facts = {spec.artifact for spec in BACKENDS.values() if spec.artifact} | {spec.platform for spec in BACKENDS.values()}
    quoted = {f'"{fact}"' for fact in facts}
    assert modules_stating(lambda t: t.string in quoted) == {"serve_app.settings"}


def test_the_readme_lists_every_batching_setting_and_both_configs_set_them_all():
    readme = (REPO / "README.md").read_text()
    listed = re.findall(r"^\| `([a-z_]+)` \| [\d.]+ \| [\d.]+ \|", readme, flags=re.M)
    assert listed == list(BatchSettings.model_fields), "the README's user_config table"
    for flavor in ("cpu", "gpu"):
        config = yaml.safe_load((REPO / "configs" / f"{flavor}.yaml").read_text())
        classifier = next(d for d in config["applications"][0]["deployments"] if d["name"] == "Classifier")
        assert set(classifier["user_config"]) == set(BatchSettings.model_fields), f"{flavor}.yaml sets every one"
