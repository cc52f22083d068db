"""Entry point ``features``: tile and embed every slide of a cohort; log the contract."""

from __future__ import annotations

from pathlib import Path

import _common
import click

from pathgen_batch.features import build_encoder, extract_cohort
from pathgen_batch.registry import tracked_run


@click.command()
@click.option(
    "--cohort",
    "cohort_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--encoder", default="stain-texture")
@click.option("--batch-size", type=int, default=64)
@click.option("--min-tissue", type=float, default=0.5)
@click.option("--device", default="auto")
@click.option("--workspace", default="workspace")
def main(
    cohort_dir: Path,
    out: Path,
    encoder: str,
    batch_size: int,
    min_tissue: float,
    device: str,
    workspace: str,
) -> None:
    enc = build_encoder(encoder, device=device)
    with tracked_run(_common.store(workspace), "features") as run:
        run.log_params(
            {
                "encoder": encoder,
                "batch_size": batch_size,
                "min_tissue": min_tissue,
                "device": str(enc.device),
                "cohort": str(cohort_dir),
                "out": str(out),
            },
            prefix="features.",
        )
        run.log_dict(enc.contract.to_dict(), "feature_contract.json")
        run.set_tags({"pathgen.feature_contract_digest": enc.contract.digest})
        results = extract_cohort(cohort_dir, out, enc, batch_size=batch_size, min_tissue=min_tissue)
        done = [r for r in results if r.status == "done"]
        tiles = sum(r.n_tiles for r in done)
        secs = sum(r.seconds for r in done)
        run.log_metrics(
            {
                "slides": float(len(results)),
                "slides_extracted": float(len(done)),
                "tiles": float(tiles),
                "tiles_per_s": tiles / secs if secs > 0 else 0.0,
            }
        )
        click.echo(f"{len(results)} slide(s), {tiles} tiles in {secs:.1f}s; run {run.run_id}")


if __name__ == "__main__":
    _common.run_main(main)
