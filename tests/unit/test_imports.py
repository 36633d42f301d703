"""Which way the imports run (README, Architecture): no cycle among rlzoo's modules, no component
that builds its parts through rlzoo.config (Hydra builds them first), and a math layer that
imports nothing but math, the tensor helpers and the types. Imports inside functions count."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The math layer: pure functions of tensors and schedules, and the components made of them.
MATH = ("rlzoo.samplers", "rlzoo.estimators", "rlzoo.objectives", "rlzoo.advantages", "rlzoo.kl",
        "rlzoo.distribution_matching.distillation", "rlzoo.distribution_matching.objectives", "rlzoo.distances",
        "rlzoo.old_policy", "rlzoo.ops", "rlzoo.types", "rlzoo.ranges", "rlzoo.rng")
# Components: what a config group builds (the math layer, rewards, tasks, policies, the critic, prompts).
COMPONENTS = (*MATH, "rlzoo.rewards", "rlzoo.tasks", "rlzoo.policies", "rlzoo.distribution_matching", "rlzoo.prompts")


def modules() -> dict[str, Path]:
    out = {}
    for path in (REPO / "rlzoo").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, known: dict, skip_functions: tuple = ()) -> set[str]:
    """The rlzoo modules `path` imports anywhere (module level or inside functions), except in
    the functions named in `skip_functions` (a module's command-line `main`)."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name in skip_functions
               for n in ast.walk(f)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rlzoo"):
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("rlzoo")}
    return {m for m in found if m in known}


def within(module: str, packages: tuple) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_no_import_cycle():
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(path: list[str]) -> None:  # depth-first; `path` ends with the module visited
        state[path[-1]] = 1
        for dep in sorted(graph[path[-1]]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join(path[path.index(dep):] + [dep])
            if dep not in state:
                visit(path + [dep])
        state[path[-1]] = 2

    for module in sorted(graph):
        if module not in state:
            visit([module])


def test_components_never_build_through_config():
    known = modules()
    offenders = sorted(m for m, p in known.items() if within(m, COMPONENTS)
                       and any(within(d, ("rlzoo.config",)) for d in imports(p, known, skip_functions=("main",))))
    assert offenders == []


def test_the_math_layer_imports_only_math_helpers_and_types():
    known = modules()
    offenders = {m: sorted(d for d in imports(p, known) if not within(d, MATH))
                 for m, p in known.items() if within(m, MATH)}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_the_trainer_knows_no_paper_b_noun():
    """The loop of README's Architecture is generic: what Paper B adds (a critic, DMD's pathwise
    loss, a learnt reward) enters through the objective's loss parts and the learners."""
    text = (REPO / "rlzoo" / "trainer.py").read_text()
    assert [word for word in ("critic", "dm_weight", "observe", "dmd", "distribution_matching") if word in text] == []


def test_only_entry_points_import_entry_points():
    """rlzoo/commands/ is the top layer: the library below it never imports a command."""
    known = modules()
    offenders = {m: sorted(d for d in imports(p, known) if within(d, ("rlzoo.commands",)))
                 for m, p in known.items() if not within(m, ("rlzoo.commands",))}
    assert {m: d for m, d in offenders.items() if d} == {}
