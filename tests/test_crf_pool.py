"""The DenseCRF process pool: single-threaded processes below the caller's
priority that never import the caller's ``__main__``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from diffuprompter_plugin.engine.crf_pool import NICENESS, THREAD_VARIABLES, crf_pool


def test_pool_processes_run_single_threaded_below_the_callers_priority():
    with crf_pool(2) as pool:
        seen = [pool.submit(os.getenv, name).result() for name in THREAD_VARIABLES]
        niceness = pool.submit(os.nice, 0).result()
    assert seen == ["1"] * len(THREAD_VARIABLES)
    assert niceness == min(19, os.nice(0) + NICENESS)


def test_script_without_main_guard_runs_annotate_all_with_a_crf_pool(tiny_models, tmp_path):
    """multiprocessing's spawn would run this script again in each pool process,
    which then fails every image with BrokenProcessPool."""
    script = tmp_path / "label.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import numpy as np
            from diffuprompter_plugin import DiffuPrompter, DiffuPrompterConfig

            print("script body ran", flush=True)
            config = DiffuPrompterConfig(
                loops=2, loop_batch_size=2, resolution=64, crf=True, crf_workers=2
            )
            model = DiffuPrompter.from_pretrained(
                {tiny_models[0]!r}, {tiny_models[1]!r}, device="cpu", config=config
            )
            rng = np.random.default_rng(0)
            items = [
                (k, rng.integers(0, 255, (40, 48, 3), dtype=np.uint8), ["ship", "harbor"])
                for k in range(3)
            ]
            for key, result in model.annotate_all(items):
                print(key, type(result).__name__, sorted(result.heatmaps), flush=True)
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["script body ran"] + [
        f"{k} Annotation ['harbor', 'ship']" for k in range(3)
    ]
