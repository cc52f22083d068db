"""Ray job entry point: the scoring job of ``pathgen-batch score``, same arguments.

Submit it to a cluster (the driver runs on the head node and joins the cluster through the
``RAY_ADDRESS`` that ``ray job submit`` sets)::

    ray job submit --address http://<head>:8265 --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/score_archive.py s3://slides/cohort --out s3://scores/pathgen \\
        --generator models:/pathgen-generator/Production \\
        --fusion models:/pathgen-fusion/Production \\
        --tracking-uri http://mlflow.internal:5000 --run-id cohort-2025-06

Exit status: 0 every slide scored, 3 some slides failed (see the failures table), 2 the run
could not start or complete (rerun with the same --run-id to resume).
"""

from __future__ import annotations

from pathgen_batch.cli.score import score

if __name__ == "__main__":
    score(prog_name="score_archive.py")
