"""The repository documents itself: every `docs/afm-format.md §N` citation names a section that exists,
every repo document a docstring or the README points to exists, the README's library example imports,
and the import layering that ARCHITECTURE.md states holds (no subpackage imports one above it, no
import cycles between modules). Hermetic: reads files, imports fmlab modules, runs no model."""

from __future__ import annotations

import ast
import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORMAT_DOC = ROOT / "docs" / "afm-format.md"
ARCHITECTURE = ROOT / "ARCHITECTURE.md"
README = ROOT / "README.md"
CITING_TREES = ("fmlab", "tests", "benchmarks", "notebooks")
SUFFIXES = (".py", ".ipynb", ".md")

SECTION = r"\d+(?:\.\d+)*"
REF = rf"{SECTION}(?:\s*[–-]\s*{SECTION})?"  # 8.2, or a range 8.2–8.3
CITATION = re.compile(rf"docs/afm-format\.md[\s(]*(§{REF}(?:\s*,\s*§?{REF})*)")
BARE = re.compile(rf"§({REF})")
HEADING = re.compile(rf"^#{{1,6}}\s+({SECTION})\.?\s", re.MULTILINE)

# repo documents that docstrings and the README name by their path from the repository root
DOC_PATH = re.compile(
    r"(?<![\w./-])(ARCHITECTURE\.md|CONTRIBUTING\.md|LICENSE(?![\w.]*\w)|data/README\.md|docs/[\w./-]+\.md)"
)

# ARCHITECTURE.md, "Subpackages and layering": bottom to top; a unit may import only the units below it
LAYERS = ["errors", "files", "model", "data", "checkpoints", "infer", "train", "export", "tiny", "eval", "lab", "cli"]
PACKAGE_ROOT_IS = "model"  # `fmlab/__init__.py` only re-exports model's API: importing it counts as model


def text_of(path: Path) -> str:
    """A file's text; a notebook's is its cells' sources, one cell after another."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        return "\n".join("".join(cell["source"]) for cell in cells)
    return path.read_text(encoding="utf-8")


def citing_files() -> list[Path]:
    files = [p for tree in CITING_TREES for p in sorted((ROOT / tree).rglob("*")) if p.suffix in SUFFIXES]
    return [p for p in files if ".ipynb_checkpoints" not in p.parts]


def expand(ref: str) -> list[str]:
    """'8.2–8.3' → ['8.2', '8.3']; '2–3' → ['2', '3']; '5.1' → ['5.1']."""
    ref = ref.lstrip("§").replace(" ", "")
    if not re.search("[–-]", ref):
        return [ref]
    first, last = (part.split(".") for part in re.split("[–-]", ref))
    last = first[: len(first) - len(last)] + last  # '5.1–2' means 5.1–5.2
    assert first[:-1] == last[:-1], f"range {ref} spans different parent sections"
    return [".".join([*first[:-1], str(n)]) for n in range(int(first[-1]), int(last[-1]) + 1)]


def cited_sections() -> dict[str, set[str]]:
    """Section → the files citing it: explicit `docs/afm-format.md §...` citations anywhere, and bare
    `§N` references in files that cite docs/afm-format.md (they refer to it)."""
    cited: dict[str, set[str]] = {}
    for path in citing_files():
        text = text_of(path)
        if "docs/afm-format.md" not in text:
            continue
        refs = [r for m in CITATION.finditer(text) for r in re.split(r"\s*,\s*", m.group(1))]
        refs += BARE.findall(text)
        for ref in refs:
            for section in expand(ref):
                cited.setdefault(section, set()).add(str(path.relative_to(ROOT)))
    return cited


def test_expand_reads_ranges_and_lists():
    assert expand("§8.2–8.3") == ["8.2", "8.3"]
    assert expand("2–3") == ["2", "3"]
    assert expand("5.1-2") == ["5.1", "5.2"]
    assert expand("§4") == ["4"]
    text = "see docs/afm-format.md §4, §5.1–5.2 and docs/afm-format.md\n  §5.4)."
    assert [m.group(1) for m in CITATION.finditer(text)] == ["§4, §5.1–5.2", "§5.4"]


def test_every_cited_section_of_afm_format_exists():
    headings = set(HEADING.findall(FORMAT_DOC.read_text(encoding="utf-8")))
    cited = cited_sections()
    assert {"1.1", "5.5", "8.3"} <= set(cited), "expected citations were not found: is the pattern stale?"
    missing = {s: sorted(files) for s, files in cited.items() if s not in headings}
    assert not missing, f"cited sections with no heading in docs/afm-format.md: {missing}"


def test_afm_format_sections_are_numbered_in_order():
    numbers = [tuple(map(int, s.split("."))) for s in HEADING.findall(FORMAT_DOC.read_text(encoding="utf-8"))]
    assert numbers == sorted(numbers) and len(numbers) == len(set(numbers))


def test_every_cited_repo_document_exists():
    sources = [
        *citing_files(),
        README,
        ARCHITECTURE,
        ROOT / "data" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]
    cited: dict[str, set[str]] = {}
    for path in sources:
        for name in DOC_PATH.findall(text_of(path)):
            cited.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert {"ARCHITECTURE.md", "docs/afm-format.md", "data/README.md"} <= set(cited)
    missing = {name: sorted(where) for name, where in cited.items() if not (ROOT / name).is_file()}
    assert not missing, f"documents cited but not in the repository: {missing}"


def readme_library_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Library\n", 1)
    assert len(section) == 2, "README.md has no '## Library' section"
    match = re.search(r"```python\n(.*?)```", section[1], re.DOTALL)
    assert match, "README.md's Library section has no python example"
    return match.group(1)


def test_readme_library_example_imports():
    imports = [n for n in ast.parse(readme_library_example()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert imports, "the Library example imports nothing"
    for node in imports:
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"README: `from {node.module} import {alias.name}` fails"


# --- the import graph --------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "fmlab").rglob("*.py"))}


def imported_modules(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The fmlab modules that `name` imports anywhere in its file (functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "fmlab"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "fmlab":
                continue
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in out if m in known and m != name}


def unit(name: str) -> str:
    """The layering unit of a module: its subpackage, `errors`, `files`, or the package root."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "fmlab"


def test_layering_rule_is_the_one_architecture_states():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(r"^Layers, bottom to top: (.+)$", text, re.MULTILINE)
    assert match, "ARCHITECTURE.md lost its 'Layers, bottom to top:' line"
    assert re.findall(r"`(\w+)`", match.group(1)) == LAYERS


def test_no_unit_imports_one_above_it():
    known = modules()
    units = {unit(m) for m in known} - {"fmlab"}
    assert units == set(LAYERS), f"units not in the layering (update ARCHITECTURE.md and LAYERS): {units ^ set(LAYERS)}"
    rank = {u: i for i, u in enumerate(LAYERS)} | {"fmlab": LAYERS.index(PACKAGE_ROOT_IS)}
    wrong = []
    for name, path in known.items():
        for target in imported_modules(name, path, known):
            src, dst = unit(name), unit(target)
            if src == "fmlab" and dst not in ("errors", PACKAGE_ROOT_IS):
                wrong.append(f"{name} -> {target} (fmlab/__init__.py may only re-export errors and model)")
            elif src != "fmlab" and src != dst and rank[dst] >= rank[src]:
                wrong.append(f"{name} -> {target} ({src} may not import {dst})")
    assert not wrong, "imports against the layering of ARCHITECTURE.md:\n  " + "\n  ".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    known = modules()
    graph = {name: sorted(imported_modules(name, path, known)) for name, path in known.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


@pytest.mark.parametrize("name", ["fmlab.model.lora", "fmlab.train.loop"])
def test_the_import_graph_is_read(name):
    known = modules()
    assert imported_modules(name, known[name], known), f"{name} imports no fmlab module? the parser is stale"
