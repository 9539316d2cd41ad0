"""The README's commands stay in step with the scripts: every command it shows parses with its
script's own parser, every flag it names exists, and its flag tables give each flag of their
scripts with the parser's default. A renamed or dropped flag fails here, not on the first user who
copies the line. So does a --help that leaves out a flag's default, or gives another, and so do
the README's Files and Dependencies tables, lists and names of our code that the code left."""

import argparse
import importlib
import os
import re
import shlex

import pytest

from config import DEFAULT_DATA_DIR, DEFAULT_IMGSZ, DEFAULT_SOURCE
from conftest import ROOT, load_benchmark

README = (ROOT / "README.md").read_text()

# flags of the tools around ours: pytest's, ruff's and torchrun's own
OTHER_TOOLS = {"--check", "--ignore", "--standalone", "--nnodes", "--nproc_per_node"}
OTHER_TOOLS |= {"--rdzv-backend", "--rdzv-endpoint", "--rdzv-id"}


def parser_of(script: str) -> argparse.ArgumentParser:
    """The parser of a script named as the README names it: ``train.py``, ``benchmarks/x.py``."""
    name = script.removesuffix(".py")
    if name.startswith("benchmarks/"):
        return load_benchmark(name.removeprefix("benchmarks/")).get_args_parser()
    return importlib.import_module(name).get_args_parser()


def with_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parser and those of its subcommands (prepare_data.py's datasets)."""
    parsers = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += action.choices.values()
    return parsers


def readme_commands() -> list[str]:
    """Each command line of the README's code blocks (continuations joined, ``&&`` chains split)
    and of its inline code, without comments."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README, flags=re.M | re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`((?:python|torchrun) [^`]*)`", README)
    return [part.strip() for line in lines for part in line.split("&&")]


def script_argv(command: str) -> tuple[str, list[str]] | None:
    """(script, its arguments) of a command that runs one of ours, else None. An optional part
    shown in brackets, ``[--dynamic]``, counts as given."""
    tokens = shlex.split(command.replace("[", "").replace("]", ""), comments=True)
    scripts = [i for i, token in enumerate(tokens) if token.endswith(".py")]
    if not tokens or tokens[0].split("/")[-1] not in ("python", "python3", "torchrun"):
        return None
    if not scripts or "-m" in tokens[: scripts[0]]:
        return None  # python -m pytest, python3 -m venv
    return tokens[scripts[0]], tokens[scripts[0] + 1 :]


COMMANDS = [argv for argv in map(script_argv, readme_commands()) if argv]


def test_the_readme_shows_commands_of_every_script():
    shown = {script for script, _ in COMMANDS}
    scripts = {"train.py", "infer_image.py", "infer_video.py", "export.py", "prepare_data.py"}
    assert scripts | {"model.py", "benchmarks/bench_inference.py"} <= shown


@pytest.mark.parametrize(("script", "argv"), COMMANDS, ids=[" ".join([s, *a]) for s, a in COMMANDS])
def test_readme_command_parses(script, argv):
    parser = parser_of(script)
    for each in with_subparsers(parser):
        each.allow_abbrev = False  # a flag shortened by a rename is a drift too
    try:
        _, unknown = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"README: `{script} {' '.join(argv)}` does not parse")
    assert not unknown, f"README: `{script}` has no flag {unknown}"


def test_every_flag_the_readme_names_exists():
    scripts = ["train.py", "infer_image.py", "infer_video.py", "export.py", "prepare_data.py"]
    scripts += ["model.py"] + [f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.py")]
    known = set(OTHER_TOOLS)
    for script in scripts:
        for parser in with_subparsers(parser_of(script)):
            known.update(flag for action in parser._actions for flag in action.option_strings)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*", README))
    assert named <= known, f"the README names flags no script has: {sorted(named - known)}"


def test_every_flag_of_the_scripts_is_in_the_readme():
    """The other direction: a flag added to one of our scripts is named in the README too (in
    train.py's flag table, or the inference scripts' one, or next to the command that takes it)."""
    scripts = ["train.py", "infer_image.py", "infer_video.py", "export.py", "prepare_data.py"]
    missing = []
    for script in [*scripts, "model.py"]:
        for parser in with_subparsers(parser_of(script)):
            for action in parser._actions:
                missing += [
                    f"{script} {flag}"
                    for flag in action.option_strings
                    if flag.startswith("--")
                    and flag != "--help"
                    and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", README)
                ]
    assert not missing, f"the README does not name {sorted(set(missing))}"


def flag_tables() -> dict[str, list[tuple[list[str], str]]]:
    """The README's flag tables (``| flag | default | meaning |``) by the ``##`` section they are
    in: each row's flags and its default cell, without backticks."""
    tables, section, lines = {}, None, README.splitlines()
    for i, line in enumerate(lines):
        section = line[3:] if line.startswith("## ") else section
        if line.strip() == "| flag | default | meaning |":
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                flag_cell, default_cell = row.strip("|").split("|")[:2]
                rows.append((re.findall(r"`(--[a-z0-9-]+)", flag_cell), default_cell.strip()))
            tables[section] = [(flags, cell.replace("`", "")) for flags, cell in rows]
    return tables


# each table's section: the scripts whose flags it lists, and their flags it leaves to the text
FLAG_TABLES = {
    # in the rows of --no-augment, --patience and --class-weights
    "Training": (["train.py"], {"--augment", "--no-patience", "--no-class-weights"}),
    # in the commands above (--no-sound: infer_video.py's alone, in the table of shared flags)
    "Inference": (["infer_image.py", "infer_video.py"], {"--input", "--no-sound"}),
}
# flags whose parser default is None and that the script resolves later, to these
RESOLVED = {
    ("Training", "--data"): DEFAULT_DATA_DIR,
    ("Training", "--imgsz"): DEFAULT_IMGSZ,
    ("Training", "--backbone-source"): DEFAULT_SOURCE,
}


def stated(cell: str, default) -> bool:
    """Whether a flag table's default ``cell`` states the parser's ``default``: off for a switch,
    numbers by value (1e-4 is 0.0001), lists space-separated, and ``A / _B`` for two scripts'
    defaults, the second with another last part (outputs/x_image / _video)."""
    if default is False:
        return cell == "off"
    if isinstance(default, int | float):
        try:
            return float(cell) == default
        except ValueError:
            return False
    if isinstance(default, list | tuple):
        return cell == " ".join(map(str, default))
    first, *others = cell.split(" / ")
    return str(default) in [first, *(first.rsplit("_", 1)[0] + other for other in others)]


@pytest.mark.parametrize("section", FLAG_TABLES)
def test_each_flag_table_gives_every_flag_of_its_scripts_with_its_default(section):
    scripts, elsewhere = FLAG_TABLES[section]
    rows = flag_tables()[section]
    listed = [flag for flags, _ in rows for flag in flags]
    assert len(listed) == len(set(listed)), f"the {section} table lists a flag twice"
    for script in scripts:
        parser = parser_of(script)
        actions = {flag: a for a in parser._actions for flag in a.option_strings}
        flags = {flag for flag in actions if flag.startswith("--") and flag != "--help"}
        missing, unknown = sorted(flags - elsewhere - set(listed)), sorted(set(listed) - flags)
        assert not missing, f"the {section} table has no row for {script}'s {missing}"
        assert not unknown, f"the {section} table lists {unknown}, which {script} does not have"
        for row_flags, cell in rows:
            # a row of several flags gives their defaults in order, separated by semicolons
            cells = cell.split("; ") if len(row_flags) > 1 else [cell]
            assert len(cells) == len(row_flags), f"the {section} table's row of {row_flags}"
            for flag, default_cell in zip(row_flags, cells, strict=True):
                default = actions[flag].default
                if flag == "--workers":  # computed from this machine's CPUs
                    assert default == min(4, os.cpu_count() or 1)
                    assert default_cell == "min(4, CPUs)"
                    continue
                default = RESOLVED.get((section, flag), default)
                if default is not None:  # else the table says what stands for it
                    assert stated(default_cell, default), (
                        f"the {section} table gives {flag} the default {default_cell!r}; "
                        f"{script}'s is {default!r}"
                    )


def test_every_help_states_the_default_of_its_flags():
    """Each flag of the scripts a user runs says its default in --help, as the parser has it (a
    help that says "default 5" while the default is 10 fails too, and so does a help that names
    the value without calling it the default); a switch's is off, and a flag without a default
    says in words what stands for it."""
    benchmarks = [f"benchmarks/{p.name}" for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    scripts = ["train.py", "infer_image.py", "infer_video.py", "export.py", "prepare_data.py"]
    unstated = []
    for script in [*scripts, "model.py", *benchmarks]:
        top = parser_of(script)
        for parser in with_subparsers(top):
            command = script + parser.prog.removeprefix(top.prog)  # prepare_data.py voc
            formatter = parser._get_formatter()
            for action in parser._actions:
                default = action.default
                if default is None or default is False or default in ("", argparse.SUPPRESS):
                    continue
                if isinstance(default, list | tuple):
                    default = " ".join(map(str, default))
                shown = formatter._expand_help(action) if action.help else ""
                if str(default) not in shown or "default" not in shown:
                    unstated.append(f"{command} {action.option_strings[-1]} ({default})")
    assert not unstated, f"--help does not give the default of {unstated}"


def test_every_value_of_a_flag_has_a_placeholder_of_its_own():
    """--help shows each flag's value as a placeholder chosen for it (N, DIR, FILE, W H, ...) or
    as its choices, not as argparse's upper-cased dest (VALID_EVERY, ANNOTATIONS, TOLERANCE)."""
    benchmarks = [f"benchmarks/{p.name}" for p in sorted((ROOT / "benchmarks").glob("*.py"))]
    scripts = ["train.py", "infer_image.py", "infer_video.py", "export.py", "prepare_data.py"]
    raw = []
    for script in [*scripts, "model.py", *benchmarks]:
        top = parser_of(script)
        for parser in with_subparsers(top):
            command = script + parser.prog.removeprefix(top.prog)
            raw += [
                f"{command} {action.option_strings[-1]}"
                for action in parser._actions
                if action.option_strings and action.nargs != 0 and action.choices is None
                if action.metavar is None
            ]
    assert not raw, f"--help names the value of {raw} by its dest"


def test_every_section_link_of_the_readme_has_its_heading():
    """Each ``](#anchor)`` link names a heading, by GitHub's anchors: lower case, punctuation
    dropped, spaces as hyphens (a heading renamed under its links fails here)."""
    text = re.sub(r"^```.*?^```", "", README, flags=re.M | re.S)  # a "# comment" is no heading
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    links = re.findall(r"\]\(#([^)]+)\)", text)
    assert links, "the README links no section"
    assert not sorted(set(links) - anchors), f"no heading for {sorted(set(links) - anchors)}"


def test_the_extending_recipe_of_a_backbone_row_runs_in_config_as_written():
    """The row the README's "Extending" adds (``BACKBONES[KEY] = dataclasses.replace(...)``),
    pasted into config.py below the table: it named a module config.py had not imported."""
    import config

    line = re.search(r'`(BACKBONES\["(\w+)"\] = [^`]+)`', README)
    assert line, "the README's Extending section shows no BACKBONES row"
    namespace = {**vars(config), "BACKBONES": dict(config.BACKBONES)}
    exec(line.group(1), namespace)
    row = namespace["BACKBONES"][line.group(2)]
    assert row.hub_name in config.BACKBONES  # its entry point and weights are an official model's
    assert row.head_blocks != config.BACKBONES[row.hub_name].head_blocks


def table_rows(header: str) -> list[list[str]]:
    """The cells of each row of the README's table whose header line is ``header``."""
    lines = README.splitlines()
    start = lines.index(header) + 2  # below the |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_files_table_names_every_script_and_only_files_that_exist():
    """Each top-level .py file and each file of benchmarks/ has a row in the Files table, and each
    file a row names is there."""
    rows = table_rows("| file | what it owns |")
    named = {name for row in rows for name in re.findall(r"`([^`]+)`", row[0])}
    ours = {p.name for p in ROOT.glob("*.py")}
    ours |= {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").iterdir() if p.is_file()}
    assert not sorted(ours - named), f"the Files table has no row for {sorted(ours - named)}"
    gone = sorted(name for name in named if not (ROOT / name).exists())
    assert not gone, f"the Files table names {gone}, which do not exist"


def requirement_names(path) -> set[str]:
    """The package names a requirements file lists (lower case, without versions or -r lines)."""
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.match(r"[A-Za-z0-9_.-]+", line).group().lower())
    return names


def test_the_dependencies_table_says_why_of_every_requirement_and_no_other():
    listed = set()
    for package, why in table_rows("| package | why |"):
        assert why, f"the Dependencies table gives no reason for {package}"
        listed.update(name.strip().lower() for name in package.removesuffix("(dev)").split(","))
    required = requirement_names(ROOT / "requirements.txt")
    required |= requirement_names(ROOT / "requirements-dev.txt")
    assert required, "no requirement read"
    assert not sorted(required - listed), (
        f"the Dependencies table leaves out {sorted(required - listed)}"
    )
    assert not sorted(listed - required), (
        f"the Dependencies table lists {sorted(listed - required)}, which no requirements file has"
    )


# the file names the README writes like a module's attribute: metrics.csv, model.onnx.data
FILE_SUFFIXES = {"csv", "data", "json", "onnx", "png", "pth", "py", "txt", "yaml"}


def test_every_name_of_our_code_the_readme_gives_exists():
    """Each ``module.name`` of our modules in the README's code spans (``engine.UPSAMPLE_ELEMENTS``,
    ``model.load_checkpoint``, ``tests/synthetic.OFFICIAL_MODELS``, ``engine.FeatureCache.fill``)
    names something that module has: a renamed function leaves no recipe pointing at nothing."""
    modules = sorted([p.stem for p in ROOT.glob("*.py")] + ["synthetic"], key=len, reverse=True)
    pattern = rf"`(?:tests/)?((?:{'|'.join(modules)})(?:\.[A-Za-z_]\w*)+)"
    names = {n for n in re.findall(pattern, README) if n.rsplit(".", 1)[1] not in FILE_SUFFIXES}
    assert len(names) >= 10, f"too few names of our code found: {sorted(names)}"
    missing, absent = [], object()
    for name in sorted(names):
        module, *attrs = name.split(".")
        found = importlib.import_module(module)
        for attr in attrs:
            found = getattr(found, attr, absent)
        missing += [name] if found is absent else []
    assert not missing, f"the README names {missing}, which our code does not have"


def test_what_resume_continues_and_keeps_are_configs_lists():
    """The README's account of --resume lists the continued settings (config.RESUMED_SETTINGS)
    and the checkpoint's model settings (config.RESUMED_MODEL) as config.py has them."""
    from config import RESUMED_MODEL, RESUMED_SETTINGS

    section = README.split("- **What `--resume CKPT` keeps and changes:**")[1].split("\n- **")[0]
    continued = re.search(r"settings continue unless[^:]*:(.*?)\. ", section, flags=re.S)
    ignored = re.search(r"A different (.*?) are ignored with a warning", section, flags=re.S)
    assert continued and ignored, "the README's --resume account lost its two lists"
    flags = {f"--{dest.replace('_', '-')}" for dest in RESUMED_SETTINGS}
    shown = set(re.findall(r"`(--[a-z-]+)`", continued.group(1)))
    assert shown == flags, f"--resume continues {sorted(flags)}; the README lists {sorted(shown)}"
    flags = {f"--{dest.replace('_', '-')}" for dest in RESUMED_MODEL} | {"--imgsz", "--config"}
    shown = set(re.findall(r"`(--[a-z-]+)`", ignored.group(1)))
    assert shown == flags, f"--resume keeps {sorted(flags)}; the README lists {sorted(shown)}"


def test_the_image_extensions_of_data_are_configs():
    from config import IMAGE_EXTENSIONS

    listed = re.search(r"Extensions: ((?:\.\w+ ?)+)\.\n", README)
    assert listed, "the README's Data section lists no extensions"
    shown = listed.group(1).split()
    assert shown == list(IMAGE_EXTENSIONS), f"config reads {IMAGE_EXTENSIONS}; the README: {shown}"
