"""The package's shape, checked statically (no model, no data, a few seconds): tools at the top
of llama_np/, the library in documented subpackages, imports without cycles, no reference to
files outside the repository, and a `--help` that never imports the heavy libraries.

The import graph counts every import in a file, at module level or inside a function: a
function-level import hides a cycle from Python at start-up, not from the reader.
"""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "llama_np"
TOOLS = sorted(p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
SUBPACKAGES = sorted(p.name for p in PACKAGE.iterdir()
                     if p.is_dir() and p.name != "__pycache__" and any(p.glob("*.py")))
# What --help must not import: it is what would make it slow (NumPy alone is ~0.1 s, torch seconds).
HEAVY_MODULES = ("numpy", "torch", "transformers", "matplotlib", "jinja2", "tokenizers",
                 "sentencepiece", "safetensors", "gguf")


def parse(path):
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# ----- tools at the top, library in subpackages ------------------------------------------

@pytest.mark.parametrize("tool", TOOLS)
def test_every_top_level_module_is_a_tool(tool):
    tree = parse(PACKAGE / f"{tool}.py")
    functions = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert "main" in functions, f"llama_np/{tool}.py has no main(): library code belongs in a subpackage"
    guards = [node for node in tree.body if isinstance(node, ast.If)
              and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"']
    assert guards, f'llama_np/{tool}.py has no `if __name__ == "__main__":` guard'
    assert ast.get_docstring(tree), f"llama_np/{tool}.py has no docstring (what the tool does)"


def test_there_are_at_least_four_subpackages():
    assert len(SUBPACKAGES) >= 4, SUBPACKAGES


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_every_subpackage_has_an_init_with_a_docstring(subpackage):
    init = PACKAGE / subpackage / "__init__.py"
    assert init.is_file(), f"llama_np/{subpackage}/ has no __init__.py"
    assert (ast.get_docstring(parse(init)) or "").strip(), \
        f"llama_np/{subpackage}/__init__.py has no docstring saying what the subpackage holds"


# ----- the import graph ------------------------------------------------------------------

def module_name(path):
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def is_package(module):
    return module in MODULES and MODULES[module].name == "__init__.py"


def imports_of(module):
    """{imported llama_np module: line of the first import}, anywhere in the file. What
    follows `import` or `from` is always a module: a .py file, or a compiled extension
    (llama_np.kernels._c), which imports nothing of llama_np."""
    found = {}
    for node in ast.walk(parse(MODULES[module])):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from its package, `level - 1` packages up
                package = module.split(".") if is_package(module) else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            if base.split(".")[0] != "llama_np":
                continue
            for alias in node.names:  # `from llama_np.x import y`: the module x.y, else x
                full = f"{base}.{alias.name}"
                targets.append(full if full in MODULES else base)
        for target in targets:
            if target and target != module and target.split(".")[0] == "llama_np":
                found.setdefault(target, node.lineno)
    return found


IMPORTS = {module: imports_of(module) for module in MODULES}


def find_cycle(graph):
    """One cycle of `graph` ({node: iterable of nodes}) as a list [a, b, ..., a], or None."""
    state = {}  # node -> 1 on the current path, 2 done
    path = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for succ in sorted(graph.get(node, ())):
            if state.get(succ) == 1:
                return path[path.index(succ):] + [succ]
            if succ not in state:
                cycle = visit(succ)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def subpackage_of(module):
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and is_package(module)):
        return parts[1]
    return None  # llama_np itself, or a tool


def package_edges():
    """{subpackage: {imported subpackage: [(importing module, line, imported module)]}}."""
    edges = {}
    for module, imported in IMPORTS.items():
        source = subpackage_of(module)
        for target, line in imported.items():
            dest = subpackage_of(target)
            if source and dest and dest != source:
                edges.setdefault(source, {}).setdefault(dest, []).append((module, line, target))
    return edges


def describe_module_cycle(cycle):
    return "\n".join(f"  {a} -> {b}   ({MODULES[a].relative_to(REPO)}:{IMPORTS[a][b]})"
                     for a, b in zip(cycle, cycle[1:]))


def describe_package_cycle(cycle, edges):
    lines = []
    for a, b in zip(cycle, cycle[1:]):
        evidence = ", ".join(f"{MODULES[m].relative_to(REPO)}:{line} imports {t}" for m, line, t in edges[a][b])
        lines.append(f"  {a} -> {b}   ({evidence})")
    return "\n".join(lines)


def test_the_import_scan_sees_function_level_and_re_exported_imports():
    """The graph is only as good as the scan: check it on imports known to exist."""
    assert "llama_np.cli.common" in IMPORTS["llama_np.generate"]          # module level
    assert "llama_np.files.hub" in IMPORTS["llama_np.cli.common"]         # inside a function
    assert "llama_np.quant.formats" in IMPORTS["llama_np.quant"]          # a package's re-exports
    assert "llama_np.kernels._c" in IMPORTS["llama_np.kernels.native"]     # the C extension
    assert not [m for m, imported in IMPORTS.items() if m in imported]


def test_no_import_cycle_between_modules():
    cycle = find_cycle({module: set(imported) for module, imported in IMPORTS.items()})
    assert cycle is None, "import cycle between modules:\n" + describe_module_cycle(cycle)


def test_no_import_cycle_between_subpackages():
    edges = package_edges()
    cycle = find_cycle({source: set(dests) for source, dests in edges.items()})
    assert cycle is None, "import cycle between subpackages:\n" + describe_package_cycle(cycle, edges)


def test_the_library_never_imports_a_tool():
    upward = [f"{MODULES[m].relative_to(REPO)}:{line} imports the tool {t}"
              for m, imported in IMPORTS.items() if subpackage_of(m)
              for t, line in imported.items() if t.count(".") == 1 and t.split(".")[1] in TOOLS]
    assert not upward, "\n".join(upward)


# ----- nothing outside the repository ----------------------------------------------------

SOURCE_SUFFIXES = {".py", ".c", ".h", ".md", ".txt", ".toml", ".cfg", ".json"}
SOURCES = sorted(p for folder in (PACKAGE, REPO / "kernels") for p in folder.rglob("*")
                 if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts)
OUTSIDE = [
    (re.compile(r"\bDESIGN(\.md)?\s*§|\bDESIGN\.md\b"), "the design notes outside the repository"),
    (re.compile(r"\.\.[/\\\"', ]+shared\b"), "../shared, outside the repository"),
    (re.compile(r"(?<![\w./~-])/(work|tmp)(/|\b)"), "an absolute path of this machine"),
]
DOC_LINK = re.compile(r"(?<![\w/.-])(docs/[\w./-]+\.md)(#[\w-]+)?")


def test_no_reference_to_a_file_outside_the_repository():
    assert SOURCES
    found = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for pattern, what in OUTSIDE:
                if pattern.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


def anchors(markdown):
    """GitHub's anchors of a markdown file's headings."""
    slugs = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slugs.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return slugs


def test_referenced_docs_exist():
    """Every docs/*.md a source file points to is in the repository, heading included."""
    broken = []
    for path in SOURCES:
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for doc, anchor in DOC_LINK.findall(line):
                target = REPO / doc.rstrip(".")
                if not target.is_file():
                    broken.append(f"{path.relative_to(REPO)}:{number}: {doc} does not exist")
                elif anchor and anchor[1:] not in anchors(target.read_text(encoding="utf-8")):
                    broken.append(f"{path.relative_to(REPO)}:{number}: {doc} has no heading {anchor}")
    assert not broken, "\n".join(broken)


# ----- --help is instant ----------------------------------------------------------------

def imported_at_help(tool):
    """Of `python -X importtime -m llama_np.<tool> --help`: (exit code, stdout, {heavy
    module: the import by the tool that brought it in}, seconds importing after the
    interpreter's start-up)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", f"llama_np.{tool}", "--help"],
                            capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    heavy, pending, seconds, after_site = {}, set(), 0.0, False
    for line in result.stderr.splitlines():  # a module's line comes after those of its imports
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( +)(\S+)$", line)
        if not match:
            continue
        cumulative, indent, name = int(match[2]), len(match[3]), match[4]
        if name.split(".")[0] in HEAVY_MODULES:
            pending.add(name.split(".")[0])
        if indent == 1:  # imported by the tool (or start-up) itself, with all it imports
            heavy.update({m: name for m in pending if m not in heavy})
            pending.clear()
            if after_site:
                seconds += cumulative / 1e6
            after_site = after_site or name == "site"
    return result.returncode, result.stdout, heavy, seconds


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_fast_because_it_imports_nothing_heavy(tool):
    """--help must answer within 2 s on any machine. Wall-clock time is not asserted (a loaded
    machine can stretch anything); what makes it fast is: no heavy library is imported, and
    llama_np's own imports take a small share of the 2 s."""
    code, out, heavy, seconds = imported_at_help(tool)
    assert code == 0 and out.startswith("usage: "), out
    assert not heavy, f"python -m llama_np.{tool} --help imports " + ", ".join(
        f"{module} (through {via})" for module, via in sorted(heavy.items())) + ": import it after parsing"
    assert seconds < 1.0, f"python -m llama_np.{tool} --help spends {seconds:.2f} s importing"
