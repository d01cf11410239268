"""The examples of README.md and docs/ cannot drift: every fenced code block is checked here, in this
process, against the code it shows, and a block that breaks fails its test with the file and line.

* ``bash`` blocks: each command is split as the shell splits it (``&&``, ``|``, ``;``, ``\\`` line
  continuations, comments). ``python X.py ARGS`` (also after ``msrun``) must name a script of the
  repository, and the script's own ``main(ARGS)`` must accept ARGS: it is run up to the end of its
  command-line parsing (the schema's keys, the script's options, the cross-key checks; argparse for
  pth2ckpt.py, dataset.py, the examples and benchmarks) and stopped there, before it reads data or
  loads a model. ``python -c CODE`` is checked as a python block, ``python -m M`` must find M.
* ``python`` blocks: they compile, their imports resolve, and every attribute they take from an
  imported module or class exists (``cifar.read_split``).
* ``yaml`` blocks: every key is a config key and its value valid (the schema's own conversion).
* Repository paths: a relative path whose first part is a tracked top-level entry of the repository
  (``src/...``, ``tests``, ``config.yaml``; not ``data/``, the folder for a user's data sets) must
  exist, in commands and in the text's inline code (``src/checkpoint/load.py: build_model`` also
  names a definition of that file, ``src.platform.device.configure_runtime()`` must import). Other
  paths (``photos/``, ``output/...``, ``/data/imagenet``, ``~/...``) are the user's and not checked.
* Links: every relative link resolves to a file, and to a heading of it when it has a ``#anchor``.
* The same command check for the indented ``python ...`` lines of data/README.md and
  benchmarks/README.md, and for the usage lines in the docstrings of the scripts (what ``-h`` shows).

Other blocks (``text``, ``mermaid``) are pictures, not commands. A block that cannot be checked says
so on the line above it: ``<!-- example: unchecked, REASON -->``. What trains is run for real by the
tests that already run the same command (the two set-up commands of the README: test_docs.py, CI).
"""
import argparse
import ast
import contextlib
import functools
import glob
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import types

import pytest

from helpers import REPO

DOCS = ["README.md"] + sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
#: Further Markdown pages of the repository whose relative links are checked too.
LINKED_PAGES = ["data/README.md", "benchmarks/README.md", "tests/fixtures/README.md"]
#: The folder for a user's data sets: a path under it names the user's data, not a repository file.
USER_DATA = "data"
UNCHECKED = re.compile(r"<!--\s*example:\s*unchecked,\s*(\S.*?)\s*-->")
SHELL, PYTHON, YAML = ("bash", "sh", "shell"), ("python", "py"), ("yaml", "yml")
#: The functions that parse an entry script's command line (besides argparse's): main(argv) is stopped
#: when the outermost of them that it calls returns.
PARSERS = ("parse_options", "parse_args", "load_config", "parse_command_line")


# --------------------------------------------------------------------------------------------
# Reading the pages
# --------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def code_blocks(text):
    """``(language, code, line number, unchecked reason or None)`` of each fenced block of `text`."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = re.match(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        above = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
        reason = UNCHECKED.search(above)
        blocks.append((lang, "\n".join(body), start + 1, reason.group(1) if reason else None))
        i += 1
    return blocks


def prose(text):
    """`text` without its fenced blocks (their lines left empty, so that line numbers stay)."""
    out, inside = [], None
    for ln in text.split("\n"):
        m = re.match(r"^ {0,3}(`{3,}|~{3,})", ln)
        if inside is None and m:
            inside = m.group(1)
            out.append("")
        elif inside is not None:
            out.append("")
            if ln.strip().startswith(inside):
                inside = None
        else:
            out.append(ln)
    return "\n".join(out)


@functools.lru_cache(maxsize=None)
def tracked_top():
    """The top-level entries of the repository that git tracks (a path under one is the repository's)."""
    try:
        names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
        return frozenset(n.split("/")[0] for n in names.splitlines() if n)
    except (OSError, subprocess.CalledProcessError):   # not a git checkout: what is there, but for ignored names
        return frozenset(n for n in os.listdir(REPO) if not n.startswith(".") or n == ".ci")


def repository_path(token):
    """`token` as a path inside the repository, or None when it names the user's files (or no path)."""
    token = token.rstrip("/.,:;)")
    if not token or token.startswith(("/", "~", "-", "$")) or re.search(r"[*?{}<>=\[\]'\" ]", token):
        return None
    first = token.split("/")[0]
    if first == USER_DATA and token != USER_DATA and not token.endswith(".md"):
        return None
    if first in tracked_top() and ("/" in token or first == token):
        return token
    return None


def path_problems(tokens):
    return [f"{path} does not exist" for path in filter(None, map(repository_path, tokens))
            if not os.path.exists(os.path.join(REPO, path))]


# --------------------------------------------------------------------------------------------
# Python code
# --------------------------------------------------------------------------------------------
def python_problems(code):
    """What is wrong with a Python snippet: a syntax error, an import that fails, an attribute of
    an imported module or class that does not exist."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"python: {exc.msg} (line {exc.lineno})"]
    problems, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                try:
                    mod = importlib.import_module(alias.name)
                except ImportError as exc:
                    problems.append(f"import {alias.name}: {exc}")
                    continue
                if alias.asname:
                    bound[alias.asname] = mod
                else:
                    bound[alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            try:
                mod = importlib.import_module(node.module)
            except ImportError as exc:
                problems.append(f"from {node.module} import ...: {exc}")
                continue
            for alias in node.names:
                value = _attribute(mod, alias.name)
                if value is None:
                    problems.append(f"from {node.module} import {alias.name}: {node.module} has no {alias.name}")
                else:
                    bound[alias.asname or alias.name] = value
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain, root = [], node
            while isinstance(root, ast.Attribute):
                chain.insert(0, root.attr)
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                problems += _chain_problems(bound[root.id], root.id, chain)
    return sorted(set(problems))


def _attribute(obj, name):
    """``obj.name``, importing a submodule of a package when that is what it names; None if neither."""
    if hasattr(obj, name):
        return getattr(obj, name)
    if isinstance(obj, types.ModuleType):
        try:
            return importlib.import_module(f"{obj.__name__}.{name}")
        except ImportError:
            return None
    return None


def _chain_problems(obj, shown, chain):
    """``obj.a.b...`` followed while the object is a module or a class (what a call returns is not known)."""
    for name in chain:
        if not isinstance(obj, (types.ModuleType, type)):
            return []
        value = _attribute(obj, name)
        if value is None:
            return [f"{shown}.{name} does not exist"]
        obj, shown = value, f"{shown}.{name}"
    return []


def reference_problems(ref):
    """A dotted name of the repository's packages (``src.data.images.read_image``) that does not resolve."""
    parts = ref.split(".")
    for n in range(len(parts), 0, -1):
        try:
            mod = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        return _chain_problems(mod, ".".join(parts[:n]), parts[n:])
    return [f"{ref}: no module {parts[0]}"]


# --------------------------------------------------------------------------------------------
# Shell commands
# --------------------------------------------------------------------------------------------
class _Parsed(BaseException):
    """The entry script's command line was parsed: stop its main() here."""


def _load_script(script):
    """The module of a repository script (``train.py``, ``examples/segmentation_fpn.py``)."""
    path = os.path.join(REPO, script)
    folder, stem = os.path.split(script)
    if not folder:
        return importlib.import_module(stem[:-3])
    if os.path.isfile(os.path.join(REPO, folder, "__init__.py")):
        return importlib.import_module(f"{folder.replace('/', '.')}.{stem[:-3]}")
    name = f"_example_{folder.replace('/', '_')}_{stem[:-3]}"
    if name not in sys.modules:   # a folder of scripts that import each other (benchmarks/)
        sys.path.insert(0, os.path.dirname(path))
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(os.path.dirname(path))
        sys.modules[name] = module
    return sys.modules[name]


def parse_as_script(script, argv):
    """Run `script`'s ``main(argv)`` in this process up to the end of its command-line parsing; the
    error it gives (one line), or None when it accepts `argv`. Every parser the script can reach
    (its own ``parse_args``/``parse_options``, the config's ``load_config``/``parse_command_line``,
    argparse) stops main() when the outermost of them returns."""
    module = _load_script(script)
    targets = [(module, n) for n in PARSERS if callable(getattr(module, n, None))]
    targets.append((argparse.ArgumentParser, "parse_args"))
    originals = [(owner, n, getattr(owner, n)) for owner, n in targets]
    depth = [0]

    def stopping(real):
        def parse_then_stop(*args, **kwargs):
            depth[0] += 1
            try:
                parsed = real(*args, **kwargs)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise _Parsed
            return parsed
        return parse_then_stop

    for owner, n, real in originals:
        setattr(owner, n, stopping(real))
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), contextlib.chdir(REPO):
            module.main(list(argv))
    except _Parsed:
        return None
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "exited while parsing"
    except Exception as exc:   # the UserError a user would see as "error: ..."
        return f"{type(exc).__name__}: {exc}"
    finally:
        for owner, n, real in originals:
            setattr(owner, n, real)
    return "main() returned without parsing a command line first"   # pragma: no cover


def shell_commands(code):
    """The simple commands (argument lists) of a shell snippet."""
    code = re.sub(r"\\\n", " ", code)
    commands = []
    for line in code.split("\n"):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        command, redirect = [], False
        for tok in lexer:
            if tok in ("&&", "||", ";", "|", "&"):
                commands.append(command)
                command = []
            elif tok in ("<", ">", ">>"):
                redirect = True
            elif redirect:
                redirect = False   # a redirection's file: the user's
            else:
                command.append(tok)
        commands.append(command)
    return [c for c in commands if c]


def command_problems(argv):
    """What is wrong with one simple command of a shell block."""
    while argv and re.match(r"^\w+=", argv[0]):   # VAR=value command ...
        argv = argv[1:]
    if not argv:
        return []
    problems = path_problems([a.split("=", 1)[-1] for a in argv])
    prog, args = os.path.basename(argv[0]), argv[1:]
    script = None
    if prog in ("python", "python3"):
        if args[:1] == ["-c"]:
            return problems + python_problems(args[1])
        if args[:1] == ["-m"]:
            if importlib.util.find_spec(args[1]) is None:
                problems.append(f"python -m {args[1]}: no such module")
            return problems
        if args and args[0].endswith(".py"):
            script, args = args[0], args[1:]
    elif prog == "msrun":
        at = next((i for i, a in enumerate(args) if a.endswith(".py")), None)
        if at is not None:
            script, args = args[at], args[at + 1:]
    if script is not None:
        if repository_path(script) is None or not os.path.isfile(os.path.join(REPO, script)):
            return problems + [f"{script}: not a script of the repository"]
        error = parse_as_script(script, _with_users_config(args))
        if error:
            problems.append(f"{script} refuses its arguments: {error}")
    return problems


def _with_users_config(args):
    """`args` with a user's ``--config FILE`` read as the repository's config.yaml (its keys are the
    user's; a yaml block shows them and is checked as one)."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--config" and i + 1 < len(out) and repository_path(out[i + 1]) is None:
            out[i + 1] = "config.yaml"
        elif a.startswith("--config=") and repository_path(a.split("=", 1)[1]) is None:
            out[i] = "--config=config.yaml"
    return out


def shell_problems(code):
    return [f"`{' '.join(c)[:90]}`: {p}" for c in shell_commands(code) for p in command_problems(c)]


def yaml_problems(code):
    from src.config.schema import SCHEMA_BY_NAME
    from src.config.strict_yaml import load_mapping
    from src.config.values import convert_key
    try:
        mapping = load_mapping(code, "example")
        for key, value in mapping.items():
            if key not in SCHEMA_BY_NAME:
                return [f"yaml: {key} is not a config key"]
            convert_key(SCHEMA_BY_NAME[key], value, "example")
    except Exception as exc:   # the ConfigError a user would see
        return [f"yaml: {exc}"]
    return []


def block_problems(lang, code):
    if lang in SHELL:
        return shell_problems(code)
    if lang in PYTHON:
        return python_problems(code)
    if lang in YAML:
        return yaml_problems(code)
    return []


# --------------------------------------------------------------------------------------------
# Links and the text's references
# --------------------------------------------------------------------------------------------
def slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, each space a hyphen."""
    text = re.sub(r"[`*_]|<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path):
    seen, out = {}, set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", prose(_read(path)), flags=re.M):
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def link_problems(page, text=None):
    """The relative links of `page` (its text, or `text` as if it were at `page`) that do not resolve."""
    problems = []
    text = prose(_read(page) if text is None else text)
    for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        target = m.group(1)
        if re.match(r"^[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
        line = text.count("\n", 0, m.start()) + 1
        if not os.path.exists(os.path.join(REPO, resolved)):
            problems.append(f"{page}:{line}: link {target}: {resolved} does not exist")
        elif anchor and (not resolved.endswith(".md") or anchor not in anchors(resolved)):
            problems.append(f"{page}:{line}: link {target}: {resolved} has no heading #{anchor}")
    return problems


def inline_problems(page):
    """The inline code of `page`'s text that names a repository path, a definition in a file or a
    dotted name of the repository's packages that is not there."""
    problems, text = [], prose(_read(page))
    packages = {t for t in tracked_top() if os.path.isfile(os.path.join(REPO, t, "__init__.py"))}
    for m in re.finditer(r"(?<!`)`((?:[^`\n]|\n(?!\s*\n))+)`(?!`)", text):   # a span may wrap a line
        code, line = " ".join(m.group(1).split()), text.count("\n", 0, m.start()) + 1
        where = re.match(r"^([\w./-]+\.py):\s*(\w+)$", code)
        dotted = re.match(r"^([A-Za-z_]\w*(?:\.\w+)+)(?:\(.*\))?$", code)
        if where:
            path, name = where.groups()
            if not os.path.isfile(os.path.join(REPO, path)):
                problems.append(f"{page}:{line}: `{code}`: {path} does not exist")
            elif name not in _definitions(path):
                problems.append(f"{page}:{line}: `{code}`: {path} defines no {name}")
        elif dotted and dotted.group(1).split(".")[0] in packages and not re.search(r"\.(py|md|yaml)$", code):
            problems += [f"{page}:{line}: `{code}`: {p}" for p in reference_problems(dotted.group(1))]
        else:
            problems += [f"{page}:{line}: `{code}`: {p}" for p in path_problems(code.split())]
    return problems


@functools.lru_cache(maxsize=None)
def _definitions(path):
    tree = ast.parse(_read(path))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


# --------------------------------------------------------------------------------------------
# The tests
# --------------------------------------------------------------------------------------------
BLOCKS = [(page, *block) for page in DOCS for block in code_blocks(_read(page))]


@pytest.mark.parametrize("page, lang, code, line, unchecked", BLOCKS,
                         ids=[f"{page}:{line}" for page, _, _, line, _ in BLOCKS])
def test_example_is_true(page, lang, code, line, unchecked):
    """Each code block of the README and docs/ names scripts, options, modules and files that exist."""
    if unchecked:
        pytest.skip(f"marked unchecked: {unchecked}")
    problems = block_problems(lang, code)
    assert not problems, f"{page}:{line}: the {lang} example no longer works:\n" + "\n".join(problems)


def test_every_fence_is_read_as_a_block():
    """The checker sees every block (a fence it misread would hide the commands after it), and the
    README's commands and Python are among the checked ones."""
    for page in DOCS:
        fences = len(re.findall(r"^ {0,3}(?:`{3,}|~{3,})", _read(page), flags=re.M))
        assert fences == 2 * len(code_blocks(_read(page))), page
    kinds = {lang for page, lang, _, _, unchecked in BLOCKS if page == "README.md" and not unchecked}
    assert {"bash", "python"} <= kinds


def indented_commands(text):
    """``(line number, command)`` of each indented ``python ...`` line of `text` (the pages outside
    docs/ show their commands as indented blocks)."""
    return [(i + 1, ln.strip()) for i, ln in enumerate(prose(text).split("\n"))
            if re.match(r"^ {4,}python3? ", ln)]


@pytest.mark.parametrize("page", LINKED_PAGES)
def test_commands_of_the_other_pages_are_true(page):
    """data/README.md, benchmarks/README.md, ...: each indented ``python ...`` command is checked as
    a bash block's."""
    problems = [f"{page}:{line}: {p}" for line, command in indented_commands(_read(page))
                for p in shell_problems(command)]
    assert not problems, "\n".join(problems)


#: The scripts whose docstrings show commands (``python train.py --demo``), as a script's -h would.
SCRIPTS_WITH_USAGE = sorted(p for p in glob.glob("*.py", root_dir=REPO) + glob.glob("examples/*.py", root_dir=REPO)
                            + glob.glob("benchmarks/*.py", root_dir=REPO))


@pytest.mark.parametrize("script", SCRIPTS_WITH_USAGE)
def test_commands_in_the_scripts_docstrings_are_true(script):
    doc = ast.get_docstring(ast.parse(_read(script)), clean=False) or ""
    doc = re.sub(r"\\\n\s*", " ", doc)                 # continuation lines
    commands = [re.sub(r"\[(--[^\[\]]*)\]", r"\1", ln.strip())  # usage notation: [--flag value]
                for ln in doc.split("\n") if re.match(r"^ {4,}(python3? |msrun )", ln)]
    problems = [p for command in commands for p in shell_problems(command)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", DOCS + LINKED_PAGES)
def test_relative_links_resolve(page):
    problems = link_problems(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", DOCS)
def test_inline_references_exist(page):
    """Paths, ``file.py: name`` and dotted names in the text's inline code are the repository's."""
    problems = inline_problems(page)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# The checker itself, on broken examples
# --------------------------------------------------------------------------------------------
def test_checker_finds_a_renamed_flag_and_keeps_the_good_ones():
    good = "python train.py --dataset_choose cifar100 --pretrained_ckpt convmlp_s_imagenet.ckpt"
    assert shell_problems(good) == []
    problems = shell_problems(good.replace("--dataset_choose", "--dataset"))
    assert len(problems) == 1 and "train.py refuses its arguments" in problems[0] and "dataset" in problems[0]
    problems = shell_problems("python pth2ckpt.py --arch convmlp_s --dst x.ckpt --check")
    assert len(problems) == 1 and "--check" in problems[0]
    problems = shell_problems("python dataset.py pack --path photos --output photos.mindrecord")
    assert len(problems) == 1 and "--output" in problems[0]


def test_checker_finds_a_bad_value_and_a_bad_pair_of_keys():
    assert "dataset_choose" in shell_problems("python evl.py --dataset_choose cifar11")[0]
    assert "val_fraction" in shell_problems("python train.py --val_fraction 0.2")[0]
    # the script's own parser runs to its end (export.py's after the config's)
    assert "disagree" in shell_problems("python export.py --batch_size 8 --export_batch_size 4")[0]


def test_checker_finds_an_old_import_and_a_missing_function():
    old = "from src import cifar; a = cifar.read_split('data/demo/cifar-10-batches-bin', 'cifar10', 'val')"
    assert python_problems(old.replace("from src import", "from src.data import")) == []
    assert "src has no cifar" in python_problems(old)[0]
    assert python_problems("from src.data import cifar\ncifar.read_splits('x')") == \
        ["cifar.read_splits does not exist"]
    problems = shell_problems(f'python -c "{old}"')
    assert len(problems) == 1 and "from src import cifar" in problems[0]


def test_checker_finds_missing_repository_paths_and_leaves_the_users_alone():
    assert shell_problems("python benchmarks/bench_gpu.py") == [
        "`python benchmarks/bench_gpu.py`: benchmarks/bench_gpu.py does not exist",
        "`python benchmarks/bench_gpu.py`: benchmarks/bench_gpu.py: not a script of the repository"]
    user = ("python dataset.py check --path /data/imagenet && "
            "python infer.py --checkpoint_path output/x/best.ckpt photos/ ~/more data/demo/cifar-10-batches-bin")
    assert shell_problems(user) == []
    assert repository_path("src/checkpoint/load.py") and repository_path("data/imagenet") is None


def test_checker_finds_unknown_yaml_keys_and_references():
    assert yaml_problems("lr: 0.001\nepoch_size: 3") == []
    assert "not a config key" in yaml_problems("learning_rate: 0.001")[0]
    assert reference_problems("src.platform.fileio.atomic_output") == []
    assert reference_problems("src.platform.fileio.atomic_writer") == [
        "src.platform.fileio.atomic_writer does not exist"]
    assert slug("Deploy: export and `infer.py`") == "deploy-export-and-inferpy"
    page = "see [training](docs/training.md#model-ema), [gone](docs/training.md#model-emas), [x](docs/nothing.md)"
    assert [p.split(": ", 1)[1] for p in link_problems("README.md", page)] == [
        "link docs/training.md#model-emas: docs/training.md has no heading #model-emas",
        "link docs/nothing.md: docs/nothing.md does not exist"]
    marked = "<!-- example: unchecked, needs an Ascend device -->\n\n```bash\npython train.py --x\n```\n"
    assert code_blocks(marked) == [("bash", "python train.py --x", 3, "needs an Ascend device")]


def test_checker_reads_a_users_config_file_as_the_repositorys():
    """``--config my.yaml`` names the user's file (its keys are shown in a yaml block, checked there);
    the rest of the command line is still checked."""
    assert shell_problems("python train.py --config my_run.yaml --lr 2e-4") == []
    assert "lr" in shell_problems("python train.py --config=my_run.yaml --lr fast")[0]
