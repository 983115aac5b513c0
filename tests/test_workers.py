"""One run shared by several real ``fiftyone delegated launch`` workers:
every sample labelled exactly once (counted by the stub model, in the
database), a worker killed with -9 and its operation found dead, runs under
different keys side by side, field declarations by concurrent processes,
claims that shrink as the pool empties, and queues refused up front."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fiftyone as fo
import numpy as np
import pytest
from fiftyone.core.odm import get_db_conn
from fiftyone.operators.executor import ExecutionRunState
from helpers import (
    WRITES,
    StubModel,
    annotation_counts,
    launch_workers,
    stop_workers,
    wait_terminal,
)
from PIL import Image

from diffuprompter_plugin import RunInProgressError, pseudo_labels_status, queue_pseudo_labels
from diffuprompter_plugin.claims import CLAIMS, WORKERS, RunClaims
from diffuprompter_plugin.engine.errors import ModelUnavailableError
from diffuprompter_plugin.labelling import compute_pseudo_labels, label_queued_samples

STUB_S = "0.5"
"""Seconds the workers' stub model takes per sample."""


@pytest.fixture
def tiles(tmp_path):
    """A persistent dataset of 12 tiny tiles; its delegated operations are
    deleted with it, so that no later test's workers find them queued."""
    dataset = fo.Dataset(persistent=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        paths.append(str(tmp_path / f"tile_{i:02d}.png"))
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(paths[-1])
    dataset.add_samples([fo.Sample(filepath=p) for p in paths])
    yield dataset
    from fiftyone.operators.delegated import DelegatedOperationService

    DelegatedOperationService().delete_for_dataset(dataset._doc.id)
    dataset.delete()


def _wait_for(condition, timeout=120.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def _queue(samples, brain_key, tiny_models, **kwargs):
    """Queues a run with the tiny models on record (the workers' stub
    replaces them), as the up-front checks need models that exist."""
    sd, sam = tiny_models
    return queue_pseudo_labels(samples, brain_key, sd_model=sd, sam_model=sam, **kwargs)


def _completed(ids):
    from fiftyone.operators.delegated import DelegatedOperationService

    service = DelegatedOperationService()
    return [i for i in ids if service.get(i).run_state == ExecutionRunState.COMPLETED]


def _states(ids):
    from fiftyone.operators.delegated import DelegatedOperationService

    return {DelegatedOperationService().get(i).run_state for i in ids}


def test_three_workers_label_every_sample_exactly_once(tiles, tmp_path, tiny_models):
    queued = _queue(tiles, "dp", tiny_models, workers=3, classes=["ship"], batch_size=2)
    ids = [q.result["id"] for q in queued]
    assert pseudo_labels_status(tiles, "dp")["pending"] == 12
    workers = launch_workers(3, tmp_path, DIFFUPROMPTER_TEST_STUB=STUB_S)
    try:
        _wait_for(lambda: pseudo_labels_status(tiles, "dp")["workers"] >= 1)
        with pytest.raises(RunInProgressError, match="'dp' is being labelled right now"):
            _queue(tiles, "dp", tiny_models, workers=1, classes=["ship"])
        with pytest.raises(RunInProgressError, match="'dp'"):
            compute_pseudo_labels(tiles, "dp", classes=["ship"], model=StubModel())
        docs = wait_terminal(ids, timeout=300)
    finally:
        stop_workers(workers)
    assert [d.run_state for d in docs] == [ExecutionRunState.COMPLETED] * 3, [
        d.result.error for d in docs
    ]
    assert set(annotation_counts(tiles.values("filepath")).values()) == {1}
    assert [d.status.progress for d in docs] == [1.0] * 3
    paths = tiles.values("filepath")
    assert len(get_db_conn()[WRITES].distinct("pid", {"_id": {"$in": paths}})) >= 2  # shared
    tiles.reload()
    results = tiles.load_brain_results("dp")
    assert (results.processed, results.instances, results.per_class) == (12, 12, {"ship": 12})
    assert [d.result.result["processed"] for d in docs] == [12] * 3
    assert pseudo_labels_status(tiles, "dp") == {
        "total": 12,
        "done": 12,
        "failed": 0,
        "claimed": 0,
        "stale": 0,
        "pending": 0,
        "workers": 0,
        "dead_operations": [],
        "lost_heatmaps": 0,
    }
    assert get_db_conn()[WORKERS].count_documents({}) == 0  # workers that end leave no record


def test_a_worker_killed_mid_sample_loses_nothing_and_repeats_nothing(
    tiles, tmp_path, tiny_models, caplog
):
    queued = _queue(tiles, "dp", tiny_models, workers=2, classes=["ship"], batch_size=1, lease_s=3)
    ids = [q.result["id"] for q in queued]
    hang = {"DIFFUPROMPTER_TEST_STUB": STUB_S, "DIFFUPROMPTER_TEST_HANG_AFTER": "2"}
    (victim,) = launch_workers(1, tmp_path / "victim", **hang)
    (survivor,) = launch_workers(1, tmp_path, DIFFUPROMPTER_TEST_STUB=STUB_S)
    try:
        _wait_for(lambda: get_db_conn()[WRITES].count_documents({"hung": victim.pid}))
        os.killpg(victim.pid, signal.SIGKILL)
        _wait_for(lambda: _completed(ids), timeout=300)
    finally:
        stop_workers([victim, survivor])
    assert set(annotation_counts(tiles.values("filepath")).values()) == {1}
    tiles.reload()
    assert tiles.count("dp_instances") == 12
    assert tiles.load_brain_results("dp").processed == 12
    (dead,) = [str(i) for i in ids if i not in _completed(ids)]  # FiftyOne: still RUNNING
    status = pseudo_labels_status(tiles, "dp")
    assert (status["stale"], status["done"], status["dead_operations"]) == (0, 12, [dead])
    command = f"fiftyone delegated fail {dead}"
    assert command in caplog.text
    cli = Path(sys.executable).with_name("fiftyone")
    subprocess.run([str(cli), *command.split()[1:]], check=True, capture_output=True, timeout=120)
    assert _states(ids) == {ExecutionRunState.COMPLETED, ExecutionRunState.FAILED}
    assert pseudo_labels_status(tiles, "dp")["dead_operations"] == []
    assert get_db_conn()[WORKERS].count_documents({}) == 0  # the dead worker is forgotten


def test_runs_under_two_keys_side_by_side(tiles, tmp_path, tiny_models):
    first = _queue(tiles, "a", tiny_models, classes=["ship"], pred_field="a", heatmap_field="ha")
    second = _queue(tiles, "b", tiny_models, classes=["ship"], pred_field="b", heatmap_field="hb")
    workers = launch_workers(2, tmp_path, DIFFUPROMPTER_TEST_STUB=STUB_S)
    try:
        docs = wait_terminal([q.result["id"] for q in first + second], timeout=300)
    finally:
        stop_workers(workers)
    assert [d.result.result["processed"] for d in docs] == [12, 12]
    assert set(annotation_counts(tiles.values("filepath")).values()) == {2}  # once per run
    tiles.reload()
    assert {"a", "a_error", "ha_ship", "b", "b_error", "hb_ship"} <= set(tiles.get_field_schema())
    assert tiles.count("a") == tiles.count("b") == tiles.count("hb_ship") == 12


DECLARE = """
import sys, time
import fiftyone as fo
from diffuprompter_plugin.brain import PseudoLabelsConfig
from diffuprompter_plugin.labelling.run import declare_fields

dataset, me, start = fo.load_dataset(sys.argv[1]), sys.argv[2], float(sys.argv[3])
for trial in range(5):
    time.sleep(max(0.0, start + trial - time.time()))
    key = f"k{trial}_{me}"
    config = PseudoLabelsConfig(key, {"ship": f"{key}_heatmap"}, f"{key}_error", "/tmp")
    declare_fields(dataset, config)
"""


def test_field_declarations_of_concurrent_processes_all_survive(tiles):
    start = time.time() + 15  # after every process has imported FiftyOne
    processes = [
        subprocess.Popen([sys.executable, "-c", DECLARE, tiles.name, str(p), str(start)])
        for p in range(4)
    ]
    assert [p.wait(120) for p in processes] == [0] * 4
    tiles.reload()
    fields = set(tiles.get_field_schema())
    expected = {
        f"k{t}_{p}{s}" for t in range(5) for p in range(4) for s in ("", "_error", "_heatmap")
    }
    assert expected - fields == set()  # 5 trials x 4 processes x 3 fields


def test_claims_shrink_as_the_pool_empties_so_workers_end_together(tiles):
    first, second = RunClaims(tiles, "dp", "run1"), RunClaims(tiles, "dp", "run1")
    first.start(tiles.values("id"))
    with first.joined(), second.joined():
        sizes = []
        for claims in [first, second] * 4:
            sizes.append(len(claims.claim(claims.claim_size(4))))
    assert sizes == [3, 3, 2, 1, 1, 1, 1, 0]  # ceil(free / (2 x 2 workers)), at most 4
    assert first.counts() == {"pending": 0, "claimed": 12, "stale": 0, "done": 0}


def test_an_operation_started_after_its_run_ended_loads_no_models(image_dataset):
    compute_pseudo_labels(image_dataset, "dp", class_field="ground_truth", model=StubModel())
    # the run was made with an already-built model: loading its models would raise
    results = label_queued_samples(image_dataset, "dp")
    assert results.processed == 4 and results.instances == 4


def test_a_worker_stays_in_view_through_failed_renewals(tiles, monkeypatch):
    claims = RunClaims(tiles, "dp", "run1", lease_s=0.3)
    other = RunClaims(tiles, "dp", "run1")
    claims.start(tiles.values("id"))
    renew, failures = claims.renew, []

    def flaky() -> None:  # the database is away for the first four beats
        if len(failures) < 4:
            failures.append(1)
            raise ConnectionError("failover")
        renew()

    with claims.joined(operation="op1"):
        monkeypatch.setattr(claims, "renew", flaky)
        time.sleep(0.45)  # the record's lease ran out: the worker looks dead
        assert other.dead_workers() == {claims.worker: "op1"}
        other.forget([claims.worker])  # as a status call does
        deadline = time.monotonic() + 10  # the heartbeat goes on and writes it anew
        while not other.live_workers() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(failures) == 4 and other.live_workers() == [claims.worker]
    assert other.live_workers() == []


def _leftovers(dataset, brain_key):
    """What a refused queue might have left: run, fields, claims, operations."""
    from fiftyone.operators.delegated import DelegatedOperationService

    dataset.reload()
    return (
        dataset.list_brain_runs(),
        sorted(dataset.get_field_schema()),
        get_db_conn()[CLAIMS].count_documents({"dataset": str(dataset._doc.id)}),
        DelegatedOperationService().count({"dataset_id": dataset._doc.id}),
    )


def test_a_queue_that_every_worker_would_fail_is_refused_leaving_nothing(
    tiles, tmp_path, tiny_models
):
    nothing = _leftovers(tiles, "dp")
    assert (nothing[0], nothing[2:]) == ([], (0, 0))
    sd, sam = tiny_models
    absent = str(tmp_path / "absent")
    with pytest.raises(ModelUnavailableError, match=r"folder '.*absent' lacks \['vae'"):
        queue_pseudo_labels(tiles, "dp", 2, classes=["ship"], sd_model=absent, sam_model=sam)
    with pytest.raises(ModelUnavailableError, match="SAM '.*absent' is neither"):
        queue_pseudo_labels(tiles, "dp", 2, classes=["ship"], sd_model=sd, sam_model=absent)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="Cannot write heatmaps to .*'.*file' is a file"):
        _queue(
            tiles,
            "dp",
            tiny_models,
            workers=2,
            classes=["ship"],
            output_dir=str(tmp_path / "file"),
        )
    with pytest.raises(ValueError, match="too long for the text encoder"):
        _queue(tiles, "dp", tiny_models, workers=2, classes=["ship", "x" * 90])
    with pytest.MonkeyPatch.context() as patch:  # the plugin is not where FiftyOne looks
        patch.setattr(fo.config, "plugins_dir", str(tmp_path / "no-plugins"))
        with pytest.raises(ValueError, match="put this plugin in FIFTYONE_PLUGINS_DIR"):
            _queue(tiles, "dp", tiny_models, workers=2, classes=["ship"])
    assert _leftovers(tiles, "dp") == nothing
    scratch = tiles.clone()  # not persistent: gone when this process exits
    try:
        with pytest.raises(ValueError, match="is not persistent"):
            _queue(scratch, "dp", tiny_models, workers=2, classes=["ship"])
        assert scratch.list_brain_runs() == []
    finally:
        scratch.delete()
    _queue(tiles, "dp", tiny_models, workers=2, classes=["ship"])
    assert _leftovers(tiles, "dp")[2:] == (12, 2)  # what the refusals did not leave


def _raw_count(dataset, field):
    """Sample documents holding ``field`` in MongoDB, declared or not."""
    return dataset._sample_collection.count_documents({field: {"$exists": True}})


def test_deleting_a_run_mid_way_stops_its_workers_and_a_new_run_inherits_nothing(
    tiles, tmp_path, tiny_models
):
    queued = _queue(tiles, "dp", tiny_models, workers=2, classes=["ship"], batch_size=1)
    ids = [q.result["id"] for q in queued]
    folder = tiles.get_brain_info("dp").config.heatmap_dir
    paths = tiles.values("filepath")
    workers = launch_workers(2, tmp_path, DIFFUPROMPTER_TEST_STUB=STUB_S)
    try:
        _wait_for(lambda: pseudo_labels_status(tiles, "dp")["done"] >= 3)
        tiles.delete_brain_run("dp")
        at_delete = sum(annotation_counts(paths).values())
        docs = wait_terminal(ids, timeout=300)
    finally:
        stop_workers(workers)
    assert [d.run_state for d in docs] == [ExecutionRunState.FAILED] * 2
    assert all("was deleted while this worker labelled it" in d.result.error for d in docs)
    assert sum(annotation_counts(paths).values()) <= at_delete + 2  # one in flight per worker
    for field in ("dp_instances", "dp_instances_error", "dp_heatmap_ship"):
        assert _raw_count(tiles, field) == 0, field
    assert not os.path.exists(folder)  # no PNG came back
    dataset_id = str(tiles._doc.id)
    assert (
        get_db_conn()[CLAIMS].count_documents(
            {"$or": [{"dataset": dataset_id}, {"run": f"{dataset_id}:dp"}]}
        )
        == 0
    )
    assert get_db_conn()[WORKERS].count_documents({}) == 0
    results = compute_pseudo_labels(tiles, "dp", classes=["harbor"], model=StubModel())
    assert (results.processed, results.per_class) == (12, {"harbor": 12})
    assert tiles.get_brain_info("dp").config.heatmap_dir != folder
