"""``colabs/inference.ipynb``: it runs headless (nbclient) the way a fresh runtime does, training
its own tiny checkpoints, and it pip-installs nothing that a package-index name could hijack
(issue 22: it once ran ``pip install vasa-jax``, a name we do not own)."""

import ast
import os
import re
import shlex
import shutil
import types

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "colabs", "inference.ipynb")

# The only index packages the notebook may name: Google's JAX builds for the runtime's accelerator,
# pinned to the JAX that setup.py is checked with. vasa_jax itself comes from a git URL, a local
# checkout or a wheel.
ALLOWED_PACKAGES = {"jax[cuda12]==0.10.2", "jax[tpu]==0.10.2",
                    # the web app's (setup.py's `serve` extra), pinned, only with LAUNCH_APP
                    "gradio==6.17.3", "huggingface-hub==0.36.2", "uvicorn==0.55.0",
                    "websockets==17.4"}
# pip options that change where names resolve or read targets from a file
REDIRECTING = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-r",
               "--requirement", "-c", "--constraint"}
SHELL_CALLS = {"system", "run", "call", "check_call", "check_output", "Popen", "getoutput",
               "getstatusoutput", "popen"}
# the install cell's run-time guard: a target computed at run time (an uploaded wheel, SOURCE)
# may reach pip only inside a function that calls it
GUARD = "_pip_target_ok"


class Dynamic:
    """A value the notebook computes at run time (not known by reading the cell)."""

    def __repr__(self):
        return "<computed at run time>"


DYNAMIC = Dynamic()


def target_problem(target: str) -> str | None:
    """Why one pip argument could install a package that is not ours, or None."""
    if target in ALLOWED_PACKAGES or re.match(r"git\+(https|ssh)://\S+$", target):
        return None
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", target):
        return f"{target!r} is downloaded from a URL"
    if target.startswith(("/", "./", "../", "~")) or target.endswith(".whl"):
        return None  # a local checkout or wheel
    return f"{target!r} is a package-index name that is not allowlisted"


def _code_cells(sources: list[str]) -> tuple[str, list[str]]:
    """(the cells as one Python program with IPython magics blanked, the shell lines of those
    magics: ``!cmd``, ``%pip ...``, and every line of a ``%%bash``-like cell)."""
    python, shell = [], []
    for src in sources:
        lines = src.splitlines()
        if lines and lines[0].lstrip().startswith("%%"):
            shell += lines[1:]
            python.append("")
            continue
        for line in lines:
            magic = re.match(r"\s*([!%]+)(.*)", line)
            if magic:
                shell.append(magic.group(2))
                line = line[:len(line) - len(line.lstrip())] + "pass"
            python.append(line)
    return "\n".join(python), shell


class _Program:
    """Where values come from in the notebook's code: assignments, parameters, call sites."""

    def __init__(self, tree: ast.Module):
        self.parent = {child: node for node in ast.walk(tree)
                       for child in ast.iter_child_nodes(node)}
        self.assigned: dict[str, list] = {}
        self.functions: dict[str, ast.FunctionDef] = {}
        self.calls: dict[str, list[ast.Call]] = {}
        self.found_targets: list[str] = []  # the literal targets that pass (_check_words)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(target, node.value)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                self._bind(node.target, node.value if isinstance(node, ast.AnnAssign) else None)
            elif isinstance(node, (ast.For, ast.comprehension)):
                self._bind(node.target, None)
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                self._bind(node.optional_vars, None)
            elif isinstance(node, ast.NamedExpr):
                self._bind(node.target, node.value)
            elif isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                self.calls.setdefault(node.func.id, []).append(node)

    def _bind(self, target, value) -> None:
        if isinstance(target, ast.Name):
            self.assigned.setdefault(target.id, []).append(value)
        elif isinstance(target, (ast.Tuple, ast.List)):
            pairs = (zip(target.elts, value.elts) if isinstance(value, (ast.Tuple, ast.List))
                     and len(value.elts) == len(target.elts) else ((t, None) for t in target.elts))
            for t, v in pairs:
                self._bind(t, v)

    def function_of(self, node):
        while node in self.parent:
            node = self.parent[node]
            if isinstance(node, (ast.FunctionDef, ast.Lambda)):
                return node
        return None

    def values(self, expr, seen=frozenset()) -> set:
        """Every value ``expr`` can take, as far as reading the code tells: strings, with
        ``DYNAMIC`` for what is computed at run time; lists and dicts contribute their items."""
        if expr is None:
            return {DYNAMIC}
        if isinstance(expr, ast.Constant):
            return {expr.value} if isinstance(expr.value, str) else set()
        if isinstance(expr, (ast.List, ast.Tuple, ast.Set)):
            return set().union(*(self.values(e, seen) for e in expr.elts))
        if isinstance(expr, ast.Dict):
            return set().union(*(self.values(e, seen) for e in expr.values))
        if isinstance(expr, (ast.Starred, ast.Subscript)):
            return self.values(expr.value, seen)
        if isinstance(expr, ast.IfExp):
            return self.values(expr.body, seen) | self.values(expr.orelse, seen)
        if isinstance(expr, ast.BoolOp):
            return set().union(*(self.values(e, seen) for e in expr.values))
        if isinstance(expr, (ast.JoinedStr, ast.BinOp)):
            parts = (expr.values if isinstance(expr, ast.JoinedStr)
                     else [expr.left, expr.right] if isinstance(expr.op, ast.Add) else None)
            if parts is None:
                return {DYNAMIC}
            out = {""}
            for part in parts:
                vals = self.values(part.value if isinstance(part, ast.FormattedValue) else part,
                                   seen)
                if not vals or DYNAMIC in vals or len(out) * len(vals) > 64:
                    return {DYNAMIC}
                out = {a + b for a in out for b in vals}
            return out
        if isinstance(expr, ast.Name):
            if (expr.id, id(expr)) in seen:
                return set()
            seen = seen | {(expr.id, id(expr))}
            function = self.function_of(expr)
            if function is not None and expr.id in _params(function):
                return self._arguments(function, expr.id, seen)
            if expr.id not in self.assigned:
                return {DYNAMIC}
            return set().union(*(self.values(v, seen) for v in self.assigned[expr.id]))
        return {DYNAMIC}  # calls, attributes, ...

    def _arguments(self, function, name: str, seen) -> set:
        """The values parameter ``name`` of ``function`` gets at its call sites."""
        args = function.args
        positional = [a.arg for a in args.posonlyargs + args.args]
        sites = self.calls.get(getattr(function, "name", None), [])
        if not sites:
            return {DYNAMIC}
        out = set()
        for call in sites:
            given = list(call.args)
            if args.vararg is not None and name == args.vararg.arg:
                out |= set().union(*(self.values(a, seen) for a in given[len(positional):]))
            elif any(isinstance(a, ast.Starred) for a in given):
                out |= set().union(*(self.values(a, seen) for a in given))
            elif name in positional and positional.index(name) < len(given):
                out |= self.values(given[positional.index(name)], seen)
            else:
                out |= set().union(*(self.values(k.value, seen) for k in call.keywords
                                     if k.arg == name or k.arg is None)) or {DYNAMIC}
        return out


def _params(function) -> set[str]:
    a = function.args
    return {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs + [a.vararg, a.kwarg] if x}


def _check_words(words: list, program: _Program, where: str, guarded: bool) -> list[str]:
    """Problems of the words after ``pip install`` (each a set of possible values)."""
    problems, redirect_next, known = [], False, []
    for vals in words:
        for value in vals:
            if value is DYNAMIC:
                if not guarded:
                    problems.append(f"{where}: a target computed at run time, outside a function "
                                    f"that checks it with {GUARD}()")
                continue
            if redirect_next:
                redirect_next = False
                continue
            if value.split("=")[0] in REDIRECTING:
                problems.append(f"{where}: pip option {value!r} changes where packages come from")
                redirect_next = "=" not in value
            elif value.startswith("-"):
                continue
            elif (problem := target_problem(value)):
                problems.append(f"{where}: {problem}")
            else:
                known.append(value)
    program.found_targets.extend(known)
    return problems


def pip_problems(sources: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(what in these code cells could pip-install a package-index name that is not ours, the
    pip invocations found, the literal targets found acceptable). Reads every way a cell can
    run pip: ``!pip`` / ``%pip`` and shell cells, command strings given to os.system /
    subprocess / IPython, and argument lists holding ``"pip", "install"``; every target is
    traced back through names, call sites and f-strings to the literals that reach it."""
    python, shell = _code_cells(sources)
    tree = ast.parse(python)
    program = _Program(tree)
    problems, found = [], []

    def check_command(text: str, where: str) -> None:
        m = re.search(r"\bpip3?\s+install\b(.*)", text)
        if not m:
            return
        found.append(where)
        words = []
        for word in shlex.split(m.group(1).split("&&")[0].split(";")[0]):
            ref = re.fullmatch(r"\$\{?(\w+)\}?|\{(\w+)\}", word)
            name = ref and (ref.group(1) or ref.group(2))
            words.append(program.values(ast.Name(id=name)) if name else {word})
        problems.extend(_check_words(words, program, where, guarded=False))

    for line in shell:
        check_command(line, f"shell line {line.strip()!r}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"line {node.lineno} ({ast.unparse(node)[:80]})"
        function = program.function_of(node)
        guarded = function is not None and any(
            isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == GUARD
            for n in ast.walk(function))
        for arg in node.args:  # an argument list ["...", "pip", "install", ...]
            if isinstance(arg, (ast.List, ast.Tuple)):
                heads = [e.value if isinstance(e, ast.Constant) else None for e in arg.elts]
                if "pip" in heads and "install" in heads[heads.index("pip"):]:
                    found.append(where)
                    rest = arg.elts[heads.index("install", heads.index("pip")) + 1:]
                    problems.extend(_check_words([program.values(e) for e in rest], program,
                                                 where, guarded))
        name = getattr(node.func, "attr", getattr(node.func, "id", None))
        if name in SHELL_CALLS and node.args and not isinstance(node.args[0], (ast.List,
                                                                               ast.Tuple)):
            for text in program.values(node.args[0]) - {DYNAMIC}:
                check_command(text, where)
        if name == "run_line_magic" and len(node.args) == 2:
            for magic in program.values(node.args[0]) - {DYNAMIC}:
                for text in program.values(node.args[1]) - {DYNAMIC}:
                    check_command(f"{magic} {text}", where)
    return problems, found, program.found_targets


def _notebook_code(nb=None) -> list[str]:
    nb = nb or nbformat.read(NOTEBOOK, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_notebook_pip_installs_only_our_repository_and_pinned_jax():
    problems, found, targets = pip_problems(_notebook_code())
    assert not problems, "\n".join(problems)
    assert found, "the check found no pip invocation: it no longer reads the install cell"
    # the literal targets that reach pip are the two JAX builds (vasa_jax itself is SOURCE or an
    # uploaded wheel, checked at run time by the guard tested below)
    assert set(targets) == ALLOWED_PACKAGES


OLD_INSTALL = ('INSTALL = True\nPACKAGE = "vasa-jax"\nimport subprocess, sys\nif INSTALL:\n'
               '    subprocess.run([sys.executable, "-m", "pip", "install", "-q", PACKAGE], '
               'check=True)')


@pytest.mark.parametrize("cells", [
    [OLD_INSTALL],  # issue 22's install cell
    ["!pip install -q vasa-jax"],
    ['PACKAGE = "vasa_jax"', "%pip install {PACKAGE}"],
    ["%%bash\npip install --upgrade vasa-jax"],
    ['import os\nos.system("pip install vasa-jax")'],
    ['import subprocess\nsubprocess.run("python -m pip install vasa-jax", shell=True)'],
    ['get_ipython().run_line_magic("pip", "install vasa-jax")'],
    ["!pip install --extra-index-url https://example.org/simple git+https://example.org/v.git"],
    ["!pip install https://example.org/vasa_jax-0.1.0-py3-none-any.whl"],
    ["!pip install jax[cuda12]"],  # unpinned
    # a computed target outside the guarded helper
    ['import subprocess, sys\nsubprocess.run([sys.executable, "-m", "pip", "install", '
     'input()])'],
], ids=["issue22", "bang", "percent-var", "bash-cell", "os-system", "shell-string",
        "line-magic", "index-url", "url-wheel", "unpinned-jax", "unguarded"])
def test_pip_check_catches_what_could_install_someone_elses_package(cells):
    problems, found, _ = pip_problems(cells)
    assert found and problems


@pytest.mark.parametrize("pip_line", ['_pip("vasa-jax")', '_pip(PACKAGE)',
                                      '_pip(SOURCE or "vasa-jax")'])
def test_pip_check_traces_names_into_the_notebooks_helper(pip_line):
    """Issue 22's name, reintroduced through the notebook's own ``_pip`` helper, fails."""
    problems, _, _ = pip_problems(_notebook_code() + ['PACKAGE = "vasa-jax"', pip_line])
    assert any("'vasa-jax' is a package-index name" in p for p in problems)


def _install_cell_functions():
    """The install cell's definitions (imports, functions, constants), without running it."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and f"def {GUARD}(" in c.source]
    tree = ast.parse(cell.source)
    keep = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef))
            or (isinstance(n, ast.Assign) and not any(isinstance(x, ast.Call)
                                                      for x in ast.walk(n.value)))]
    ns: dict = {}
    exec(compile(ast.Module(body=keep, type_ignores=[]), NOTEBOOK, "exec"), ns)
    return ns


def test_install_cell_refuses_index_names_at_run_time(tmp_path, monkeypatch):
    ns = _install_cell_functions()
    ran = []
    ns["subprocess"] = types.SimpleNamespace(run=lambda cmd, **kw: ran.append(cmd))
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "setup.py").write_text("")
    wheel = tmp_path / "vasa_jax-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    good = ["git+https://example.org/vasa_jax.git", str(checkout), str(wheel), *ALLOWED_PACKAGES]
    ns["_pip"](*good)
    assert ran and ran[0][ran[0].index("install") + 1:] == ["-q", *good]
    for bad in ["vasa-jax", "vasa_jax", "jax", "jax[cuda12]", "jax[tpu]==0.4.38",
                "https://example.org/vasa_jax-0.1.0-py3-none-any.whl",
                "vasa_jax-0.1.0-py3-none-any.whl", str(tmp_path / "missing.whl"), str(tmp_path)]:
        with pytest.raises(ValueError, match="Refusing"):
            ns["_pip"](bad)
    assert len(ran) == 1
    # SOURCE: a git URL, a checkout or a wheel; anything else is an error, never an index name
    monkeypatch.chdir(tmp_path)
    assert ns["source_target"](wheel.name) == str(wheel)
    assert ns["source_target"]("checkout") == str(checkout)
    for bad in ["vasa-jax", "vasa_jax==0.1.0", "missing.whl"]:
        with pytest.raises(ValueError, match="not on the package index"):
            ns["source_target"](bad)


def test_install_cell_detects_the_accelerator(monkeypatch):
    ns = _install_cell_functions()
    ns["glob"] = types.SimpleNamespace(glob=lambda pattern: [])  # no /dev/accel*
    ns["shutil"] = types.SimpleNamespace(which=lambda name: None)  # no nvidia-smi
    for var in ("COLAB_TPU_ADDR", "TPU_NAME", "COLAB_GPU"):
        monkeypatch.delenv(var, raising=False)
    assert ns["accelerator"]() == "cpu"
    monkeypatch.setenv("COLAB_GPU", "1")
    assert ns["accelerator"]() == "gpu"
    monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
    assert ns["accelerator"]() == "tpu"
    assert ns["JAX_FOR"] == {"gpu": "jax[cuda12]==0.10.2", "tpu": "jax[tpu]==0.10.2"}


# Test-sized training for the notebook's quickstart: the ``test`` variants, 2 steps each on one
# device (what the generation_workdirs fixture trains), 3 denoising steps in its demo.
TINY = ["train.steps=2", "num_devices=1", "train.async_checkpoints=False"]


@pytest.mark.slow
def test_inference_notebook_runs_headless_from_nothing(synthtalk_tiny, tmp_path, monkeypatch):
    """No checkpoints, nothing installed by the notebook: it trains the quickstart models (the
    test variants on SynthTalk res64_tiny), then generates, shows and verifies a video."""
    from nbclient import NotebookClient
    from PIL import Image

    from data_pipeline.synthtalk.generate import generate_clip
    from vasa_jax.safety.provenance import read_manifest

    photo = tmp_path / "face.png"
    Image.fromarray(generate_clip(0, 950, 1, 1, 256)["frames"][0]).save(photo)
    data_dir = tmp_path / "tensorflow_datasets"
    shutil.copytree(synthtalk_tiny, data_dir)  # the quickstart writes its latents beside it
    workdir = tmp_path / "quickstart"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    (params,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    defaults = {t.id for n in ast.parse(params.source).body for t in n.targets}
    params.source = "\n".join([
        "INSTALL = False", "SOURCE = ''", "LATENT_CKPT = None", "MOTION_CKPT = None",
        f"WORKDIR = {str(workdir)!r}", f"DATA_DIR = {str(data_dir)!r}",
        "SYNTHTALK_CONFIG = 'res64_tiny'", "LATENT_VARIANT = 'test'",
        "MOTION_VARIANT = 'test_latents'", f"SET_LATENT = {TINY!r}",
        f"SET_MOTION = {TINY + ['sample.steps=3']!r}", f"IMAGE = {str(photo)!r}",
        "AUDIO = None", "OUT = 'talk.mp4'", "GAZE = None", "EMOTION = 'happy'", "STEPS = 3",
        "SEED = 0", "LAUNCH_APP = False"])
    assert {t.id for n in ast.parse(params.source).body for t in n.targets} == defaults
    monkeypatch.setenv("VASA_JAX_C2PA_DIR", str(tmp_path / "c2pa"))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]

    def printed(cell):
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")

    (train,) = [c for c in code if "quickstart(" in c.source]
    assert "No checkpoints given: training" in printed(train)
    assert f"stage 1: {workdir / 'latent'} | stage 2: {workdir / 'motion'}" in printed(train)
    html = [o for o in outputs if o.output_type == "display_data" and "text/html" in o.data]
    assert html and "data:video/mp4;base64," in html[-1].data["text/html"]
    (verify,) = [c for c in code if "verify_video(OUT)" in c.source]
    assert "C2PA manifest: VALID" in printed(verify) and "watermark: DETECTED" in printed(verify)
    assert read_manifest(tmp_path / "talk.mp4").status == "valid"
