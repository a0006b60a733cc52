"""The package boundaries hold: no import cycle between project modules, util/ is infrastructure only, models/
does not read data files, nothing that trains imports the offline preparation, and no file cites a document
the repository does not have."""
import ast
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('dataset', 'models', 'pipeline', 'prep', 'synthetic', 'util', 'viewer', 'vlm_ps_generation')
SCRIPTS = ('train_openseg_pre_train', 'eval_openseg_pre_train', 'train_esg', 'evaluate', 'query')


def project_modules():
    """{module name: path} of every project module (packages and the stage scripts)."""
    modules = {name: os.path.join(ROOT, name + '.py') for name in SCRIPTS}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for f in files:
                if f.endswith('.py'):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, '.')
                    modules[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = os.path.join(folder, f)
    return modules


def imports_of(path, modules):
    """Project modules imported by a file (at any depth: lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports pkg.mod; `from pkg import name` imports pkg itself
            names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules else node.module
                     for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition('.')[0]
            if name:
                found.add(name)
    return found


def graph():
    modules = project_modules()
    return {m: imports_of(p, modules) - {m} for m, p in modules.items()}


def test_no_import_cycles():
    edges = graph()
    state, cycles = {}, []

    def visit(m, stack):
        state[m] = 'open'
        for n in sorted(edges[m]):
            if state.get(n) == 'open':
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 'done'

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    # a package's __init__ re-exporting its own modules is not a cycle between concerns
    cycles = [c for c in cycles if len({x.split('.')[0] for x in c}) > 1 or not any(x.count('.') == 0 for x in c)]
    assert not cycles, '\n'.join(' -> '.join(c) for c in cycles)


def test_boundaries():
    edges = graph()
    stages = set(SCRIPTS) | {'vlm_ps_generation.generation_vlm'}
    rules = [('util', ('dataset', 'models', 'pipeline', 'prep', 'synthetic', 'viewer', 'vlm_ps_generation'), stages),
             ('models', ('dataset', 'pipeline', 'prep', 'synthetic', 'viewer', 'vlm_ps_generation'), stages),
             ('dataset', ('pipeline', 'prep', 'synthetic', 'viewer', 'vlm_ps_generation'), stages),
             ('pipeline', ('prep', 'synthetic', 'viewer', 'vlm_ps_generation'), set()),
             ('synthetic', ('vlm_ps_generation',), stages)]
    wrong = []
    for package, forbidden, forbidden_modules in rules:
        for m, deps in edges.items():
            if m == package or m.startswith(package + '.'):
                wrong += [(m, d) for d in deps if d.split('.')[0] in forbidden or d in forbidden_modules]
    # nothing that trains or evaluates imports the offline preparation
    for m in stages | {'dataset.point_loader', 'dataset.feature_loader', 'dataset.ess_loader'}:
        wrong += [(m, d) for d in edges[m] if d.startswith('prep')]
    assert not wrong, wrong


def test_no_module_imports_a_stage_script():
    """What several stages, the viewer or a benchmark use lives in the packages (pipeline/schemas.py for the keys,
    pipeline/networks.py, pipeline/query.py ...); a stage script is a program, imported by the tests alone."""
    modules = project_modules()
    stages = set(SCRIPTS) | {'vlm_ps_generation.generation_vlm'}
    files = dict(modules)
    for folder in ('bench', 'run'):
        for f in sorted(os.listdir(os.path.join(ROOT, folder))):
            if f.endswith('.py'):
                files[f'{folder}/{f}'] = os.path.join(ROOT, folder, f)
    wrong = [(m, d) for m, path in files.items() for d in imports_of(path, modules) - {m} if d in stages]
    assert not wrong, wrong
    # run/experiment.py reads the stages' keys without importing them
    assert 'import_module' not in open(os.path.join(ROOT, 'run', 'experiment.py')).read()


# the modules whose job is a stage's config: reading it (util/config.py) and starting a stage from it
CONFIG_MODULES = ('util/config.py', 'pipeline/stage.py')


def test_library_code_takes_plain_values_not_the_config():
    """pipeline/ and util/ take the values they use; the whole ``cfg`` object stays in the stage scripts."""
    wrong = []
    for package in ('pipeline', 'util'):
        for f in sorted(os.listdir(os.path.join(ROOT, package))):
            rel = f'{package}/{f}'
            if not f.endswith('.py') or rel in CONFIG_MODULES:
                continue
            tree = ast.parse(open(os.path.join(ROOT, rel)).read())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Name) and node.id == 'cfg') or (isinstance(node, ast.arg)
                                                                         and node.arg == 'cfg'):
                    wrong.append(f'{rel}:{node.lineno}')
    assert not wrong, f"library code reads a cfg object at {wrong}; pass the values instead"


def test_no_reference_to_documents_users_do_not_have():
    out = subprocess.run(['git', 'grep', '-n', '-I', 'SP' + 'EC', '--', '.'], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout == '', out.stdout


def test_every_script_compiles():
    """Scripts no test imports (run/, bench/) still parse."""
    files = subprocess.run(['git', 'ls-files', '*.py'], cwd=ROOT, capture_output=True, text=True).stdout.split()
    for f in files:
        with open(os.path.join(ROOT, f)) as source:
            compile(source.read(), f, 'exec')  # a SyntaxError names the file and line
