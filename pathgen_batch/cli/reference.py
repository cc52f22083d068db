"""The README's CLI reference, rendered from the click command tree so it cannot drift.

``python -m pathgen_batch.cli.reference --write README.md`` rewrites the block between the
``<!-- cli-reference:start -->`` and ``<!-- cli-reference:end -->`` markers; a test checks that
the README holds exactly what this renders.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import click

START = "<!-- cli-reference:start -->"
END = "<!-- cli-reference:end -->"


def walk(
    cmd: click.Command, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command below ``cmd`` (depth first, sorted), with its name path."""
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in sorted(cmd.list_commands(ctx)):
            sub = cmd.get_command(ctx, name)  # the root group imports each command's module here
            if sub is not None:
                yield from walk(sub, (*path, name))


def _options(cmd: click.Command) -> list[str]:
    out = []
    for p in cmd.params:
        if isinstance(p, click.Option) and not p.hidden and "--help" not in p.opts:
            out.append("/".join(p.opts))
    return out


def render(root: click.Command, prog: str = "pathgen-batch") -> str:
    lines = [START, ""]
    for path, cmd in walk(root):
        if not path or isinstance(cmd, click.Group):
            continue
        with click.Context(cmd, info_name=" ".join((prog, *path))) as ctx:
            usage = " ".join(cmd.collect_usage_pieces(ctx))
        lines.append(f"- `{prog} {' '.join(path)} {usage}`")
        short = cmd.get_short_help_str(limit=100)
        if short:
            lines.append(f"  {short}")
        opts = _options(cmd)
        if opts:
            lines.append("  Options: " + ", ".join(f"`{o}`" for o in opts))
    lines += ["", END]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    a, b = text.find(START), text.find(END)
    if a < 0 or b < a:
        raise ValueError(f"README has no {START} ... {END} block")
    return text[:a] + block + text[b + len(END) :]


def main(argv: list[str]) -> int:
    from pathgen_batch.cli import main as root

    block = render(root)
    if len(argv) == 2 and argv[0] == "--write":
        p = Path(argv[1])
        p.write_text(replace_block(p.read_text(), block))
        return 0
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
