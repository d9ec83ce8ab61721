"""The README stays true: its method table lists exactly the registered methods, and its Quick
start test command is the one CI runs."""
import re
from pathlib import Path

import lumos

ROOT = Path(__file__).resolve().parents[1]


def _table_methods(text: str) -> set[str]:
    section = text.split("<!-- METHODS-TABLE -->", 1)[1].split("<!-- METHODS-END -->", 1)[0]
    return set(re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|", section, flags=re.M))


def test_method_table_matches_the_registry():
    text = (ROOT / "README.md").read_text()
    assert _table_methods(text) == {m.name for m in lumos.methods()}


def test_quick_start_test_command_is_what_ci_runs():
    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```", 2)[1]
    commands = [line for line in block.splitlines()[1:] if line.strip() and not line.lstrip().startswith("#")]
    assert len(commands) == 2
    assert "lumos demo" in commands[0]
    assert commands[1].strip() in (ROOT / ".ci" / "run").read_text()


def test_python_examples_run(tmp_path, monkeypatch):
    """Every ```python block of the README runs, in order, in one namespace."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)  # examples may save files
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    ns: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(textwrap.dedent(block), f"README block {i}", "exec"), ns)
    import matplotlib.pyplot as plt

    plt.close("all")


def test_command_line_examples_parse():
    """Every `lumos ...` line of the README's command-line block is a command the parser accepts."""
    import shlex

    from lumos.cli import build_parser

    text = (ROOT / "README.md").read_text()
    block = text.split("## Command line", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands, current = [], ""
    for line in block.splitlines():
        code = line.split("#", 1)[0].rstrip()
        if not code.strip():
            continue
        current = f"{current} {code.strip().rstrip(chr(92))}" if current else code.strip().rstrip(chr(92))
        if not code.endswith("\\"):
            commands.append(current)
            current = ""
    assert len(commands) >= 8 and all(c.startswith("lumos ") for c in commands)
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(shlex.split(command)[1:])  # a SystemExit here fails the test
        assert callable(args.func), command
