"""``pathgen-batch results``: the README's results section from a repeated CV's summary.json."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("summary", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--readme",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the section between the results markers of this Markdown file.",
)
@click.option(
    "--check", is_flag=True, help="With --readme: exit 1 when the file differs, write nothing."
)
def results(summary: Path, readme: Path | None, check: bool) -> None:
    """Render the results table, tests and claim verdicts of SUMMARY as Markdown.

    SUMMARY is the summary.json that `pathgen-batch evaluate` writes. Without --readme the
    Markdown is printed.
    """
    from pathgen_batch.training.results_table import (
        block,
        current_block,
        read_summary,
        results_markdown,
        write_block,
    )

    data = read_summary(summary)
    source = summary.as_posix()
    if readme is None:
        click.echo(results_markdown(data, source))
        return
    if check:
        same = current_block(readme.read_text(), str(readme)) == block(data, source)
        click.echo(f"{readme}: results {'match' if same else 'differ from'} {summary}")
        raise SystemExit(0 if same else 1)
    changed = write_block(readme, data, source)
    click.echo(f"{readme}: results {'written' if changed else 'unchanged'} from {summary}")
