"""What pyproject.toml promises: the dependency floors hold here, and every extra installs something the kit uses."""

import importlib.metadata
import re

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.testing_utils import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
PACKAGE = REPO_ROOT / "hf_bigsmall"
# distribution -> the module the kit imports from it
IMPORT_NAMES = {"nvidia-ml-py": "pynvml", "codecarbon": "codecarbon", "matplotlib": "matplotlib", "gguf": "gguf",
                "deepspeed": "deepspeed", "onnxruntime-genai": "onnxruntime_genai", "onnx-ir": "onnx_ir",
                "llama-cpp-python": "llama_cpp", "liger-kernel": "liger_kernel"}


def _requirements(strings):
    return {Requirement(s).name: Requirement(s) for s in strings if not s.startswith("hf-bigsmall")}


def _source() -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("name", ["transformers", "accelerate", "datasets", "huggingface_hub", "safetensors", "torch"])
def test_installed_versions_meet_the_declared_floors(name):
    requirement = _requirements(PROJECT["dependencies"])[name]
    installed = Version(importlib.metadata.version(name))
    assert requirement.specifier.contains(installed, prereleases=True), (name, str(installed), str(requirement))


def test_transformers_floor_is_the_tested_one():
    # README ("Supported versions") says how this floor was tested; keep both in step
    floor = next(s.version for s in _requirements(PROJECT["dependencies"])["transformers"].specifier if s.operator == ">=")
    assert f"transformers>={floor}" in (REPO_ROOT / "README.md").read_text()


def test_every_extra_installs_a_package_the_kit_imports():
    source = _source()
    for extra, requirements in PROJECT["optional-dependencies"].items():
        if extra in ("test", "all"):
            continue
        for name in _requirements(requirements):
            module = IMPORT_NAMES.get(name, name)
            used = re.search(rf"^\s*(import|from) {module}\b", source, re.MULTILINE) or f'require("{module}")' in source
            assert used, f"extra [{extra}] installs {name}, which hf_bigsmall never imports"


def test_every_availability_check_is_used():
    from hf_bigsmall.utils import import_utils

    checks = [name for name in dir(import_utils) if re.fullmatch(r"is_\w+_available", name)]
    source = _source().replace((PACKAGE / "utils" / "import_utils.py").read_text(encoding="utf-8"), "")
    assert checks and [name for name in checks if name not in source] == []


def _calls_and_imports():
    import ast

    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            yield path.relative_to(REPO_ROOT).as_posix(), node


def test_library_code_logs_through_transformers_and_never_prints():
    import ast

    prints, stdlib_loggers = [], []
    for where, node in _calls_and_imports():
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            prints.append(where)
        if isinstance(node, ast.Import) and any(alias.name == "logging" for alias in node.names):
            stdlib_loggers.append(where)
    # the command line's output goes through one function
    assert prints == ["hf_bigsmall/utils/console.py"]
    # the one exception undoes the root-logger setup that ONNX Runtime's int4 quantizer makes when imported
    assert stdlib_loggers == ["hf_bigsmall/quantization/genai.py"]


def _installed_by(requirements: list[str]) -> set[str]:
    """The top-level modules that installing `requirements` brings, with everything they depend on."""
    from packaging.utils import canonicalize_name

    modules_of: dict[str, set[str]] = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules_of.setdefault(canonicalize_name(distribution), set()).add(module)
    seen, pending, modules = set(), [Requirement(r) for r in requirements], set()
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        modules |= modules_of.get(name, set())
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: nothing it brings can be imported either
        for line in requires:
            dependency = Requirement(line)
            wanted = [""] + sorted(requirement.extras)
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in wanted):
                pending.append(dependency)
    return modules


def test_every_module_the_tests_import_is_installed_by_the_readme_lines():
    # `pip install -e ".[test]"`, requirements-assets.txt and requirements-test.txt are all a new user
    # installs (README, "Run the tests"); a test that imports anything else fails on their machine. Optional backends are allowed
    # where the test skips without them (requires_package / importorskip).
    import ast
    import sys

    assets = [line for name in ("requirements-assets.txt", "requirements-test.txt")
              for line in (REPO_ROOT / name).read_text().splitlines() if line.strip() and not line.startswith("#")]
    available = _installed_by(PROJECT["dependencies"] + PROJECT["optional-dependencies"]["test"]) | {
        module for line in assets for module in _installed_by([line])}
    sources = {path: path.read_text(encoding="utf-8") for path in sorted((REPO_ROOT / "tests").rglob("*.py"))}
    guarded = {m for text in sources.values() for m in re.findall(r'(?:requires_package|importorskip)\("(\w+)"', text)}
    missing = set()
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names | available | guarded | {"hf_bigsmall", "tests"}:
                    missing.add(f"{path.relative_to(REPO_ROOT)}: {top}")
    assert not missing, sorted(missing)


def _package_import_graph() -> dict[str, set[str]]:
    """module -> the modules of hf_bigsmall it imports, at any depth of its code (function-local imports too).

    A package's `__init__` is a module like the others: importing a package runs it, so a package that
    imports its children and a child that imports its package would be a circle. Imports under
    `if TYPE_CHECKING:` never run and are left out.
    """
    import ast

    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    class Imports(ast.NodeVisitor):
        def __init__(self):
            self.nodes = []

        def visit_If(self, node):
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node):
            self.nodes.append(node)

        def visit_ImportFrom(self, node):
            self.nodes.append(node)

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph[name] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        imports = Imports()
        imports.visit(ast.parse(path.read_text(encoding="utf-8")))
        for node in imports.nodes:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                prefix = ".".join(base + ([node.module] if node.module else []))
                targets = [prefix] + [f"{prefix}.{alias.name}" for alias in node.names]
            graph[name] |= {target for target in filter(None, map(resolve, targets)) if target != name}
    return graph


def _import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while not group or group[-1] != module:
                group.append(stack.pop())
            if len(group) > 1:
                circles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(circles)


def test_no_two_files_of_the_package_import_each_other():
    # `utils/` is the ground floor: it imports nothing above it
    graph = _package_import_graph()
    above = {m: sorted(t for t in targets if not t.startswith("hf_bigsmall.utils"))
             for m, targets in graph.items() if m.startswith("hf_bigsmall.utils.")}
    assert {m: t for m, t in above.items() if t} == {}
    assert _import_circles(graph) == []


def test_the_circle_check_finds_a_circle():
    assert _import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
