"""The batch service called directly: real Redis and file storage, no Celery, no HTTP.

The dispatcher records what it was asked to queue, so each test runs a batch's
steps itself (``advance`` until it says nothing is left), as the ``vor.batch``
task would.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.cli import batch
from services.errors import Conflict, InvalidSpec
from services.jobs.batch_spec import BatchRequest, item_spec, parse_batch
from services.jobs.batch_store import BatchRecord, BatchStore, ItemError, new_batch_id
from services.jobs.batches import Batches, Step
from services.jobs.lifecycle import Lifecycle
from services.models import Status
from tests.support.jobs import make_lifecycle, recording

CHUNK = 100
"""``VOR_BATCH_CHUNK``'s default."""
BOX = {"label": "logo", "boxes": [[0.1, 0.1, 0.2, 0.2]]}
URL = "http://127.0.0.1:9/clip.mp4"
HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def jobs(redis_url: str, tmp_path: Path) -> Lifecycle:
    return make_lifecycle(redis_url, tmp_path)


def request(items: list[Any], **extra: Any) -> BatchRequest:
    return BatchRequest.model_validate({"spec": {"classes": [BOX]}, "items": items, **extra})


def run(batches: Batches, batch_id: str) -> int:
    """Advance the batch until nothing is left; how many steps it took."""
    steps = 1
    while batches.advance(batch_id) is Step.more:
        steps += 1
    return steps


def test_items_become_jobs_and_invalid_items_fail_alone(jobs: Lifecycle) -> None:
    batches = Batches(jobs)
    items: list[Any] = [{"video_url": f"{URL}?{i}", "ref": f"clip{i}"} for i in range(6)]
    items[2] = {"video_url": "ftp://example.com/x.mp4"}
    items[4] = {
        "video_url": URL,
        "spec": {"classes": [{"label": "x", "boxes": [[0.9, 0, 0.5, 0.5]]}]},
    }
    items[5] = "not an object"
    record, created = batches.submit("acme", request(items))
    assert created and recording(jobs).batches == [record.id]
    assert batches.view(record).status == "accepting"
    run(batches, record.id)
    view = batches.view(record, offset=0, limit=10)
    assert view.counts.queued == 3 and view.counts.failed == 3 and view.counts.invalid == 3
    assert view.status == "running" and view.counts.pending == 0
    assert view.items is not None
    by_index = {item.index: item for item in view.items}
    assert [by_index[i].status for i in range(6)] == [
        "queued", "queued", "failed", "queued", "failed", "failed",
    ]  # fmt: skip
    assert by_index[0].ref == "clip0" and by_index[0].job_id is not None
    errors = {i: by_index[i].error for i in (2, 4, 5)}
    assert errors[2] is not None and errors[2].field == "items[2].video_url"
    assert errors[4] is not None and errors[4].field == "items[4].spec.classes[0].boxes"
    assert "inside the frame" in errors[4].message
    assert errors[5] is not None and errors[5].field == "items[5]"
    job = jobs.store.require(by_index[0].job_id or "")
    assert job.batch_id == record.id and job.batch_index == 0 and job.spec.video_url == f"{URL}?0"


def test_completed_once_when_every_item_ended(jobs: Lifecycle) -> None:
    batches = Batches(jobs)
    record, _ = batches.submit("acme", request([{"video_url": URL}] * 3, webhook_url=HOOK))
    run(batches, record.id)
    made, _ = jobs.store.list_jobs("acme", limit=10)
    jobs.fail(made[0].id, None, InvalidSpec("bad"))
    jobs.cancel(made[1])
    assert batches.view(record).status == "running"
    assert recording(jobs).events(record.id) == []
    jobs.store.finish(made[2].id, Status.succeeded)
    assert jobs.complete_batch(record.id) is True
    assert jobs.complete_batch(record.id) is False
    view = batches.view(record)
    assert view.status == "completed" and view.progress == 1.0
    assert (view.counts.succeeded, view.counts.failed, view.counts.canceled) == (1, 1, 1)
    assert recording(jobs).events(record.id) == ["batch.completed"]


def test_expansion_resumed_after_a_crash_makes_no_second_job(jobs: Lifecycle) -> None:
    batches = Batches(jobs)
    record, _ = batches.submit(
        "acme", request([{"video_url": f"{URL}?{i}"} for i in range(CHUNK + 5)])
    )
    batches._expand(record, 0, 10)  # a chunk made its jobs; its worker died before moving on
    run(batches, record.id)
    view = batches.view(record)
    assert view.counts.queued == CHUNK + 5 and view.counts.pending == 0
    made, _ = jobs.store.list_jobs("acme", limit=500)
    assert len(made) == CHUNK + 5, "no item made a second job"
    assert {j.batch_index for j in made} == set(range(CHUNK + 5))


def test_cancel_ends_the_items_queued_and_those_not_made_yet(jobs: Lifecycle) -> None:
    batches = Batches(jobs)
    record, _ = batches.submit(
        "acme", request([{"video_url": URL}] * (CHUNK + 20), webhook_url=HOOK)
    )
    assert batches.advance(record.id) is Step.more  # one chunk made; the rest not yet
    batches.cancel(record)
    assert batches.view(record).status == "canceling"
    run(batches, record.id)
    view = batches.view(record)
    assert view.status == "canceled" and view.counts.canceled == CHUNK + 20
    assert recording(jobs).events(record.id) == ["batch.completed"]
    with pytest.raises(Conflict):
        batches.cancel(record)


def test_idempotency_key_replays_the_batch_and_refuses_another(jobs: Lifecycle) -> None:
    batches = Batches(jobs)
    first, created = batches.submit("acme", request([{"video_url": URL}]), "k1")
    again, created_again = batches.submit("acme", request([{"video_url": URL}]), "k1")
    assert (created, created_again) == (True, False) and again.id == first.id
    with pytest.raises(Conflict, match="another request"):
        batches.submit("acme", request([{"video_url": URL + "?other"}]), "k1")
    other, _ = batches.submit("globex", request([{"video_url": URL}]), "k1")
    assert other.id != first.id


def test_the_request_is_checked_whole_and_items_one_by_one() -> None:
    with pytest.raises(InvalidSpec, match="items"):
        parse_batch(b'{"items": []}')
    with pytest.raises(InvalidSpec) as bad_shared:
        parse_batch(
            b'{"spec": {"classes": [{"label": "a b", "boxes": [[0,0,1,1]]}]}, "items": [{}]}'
        )
    assert bad_shared.value.field == "spec.classes[0].label"
    with pytest.raises(InvalidSpec) as shared_url:
        parse_batch(b'{"spec": {"video_url": "http://x/y"}, "items": [{}]}')
    assert shared_url.value.field == "spec.video_url"
    # a shared spec that only the items complete is fine
    shared = parse_batch(b'{"spec": {"mode": "segment"}, "items": [{}]}').spec
    spec = item_spec(shared, {"video_url": URL, "spec": {"classes": [BOX]}}, 7)
    assert spec.mode == "segment" and spec.classes[0].label == "logo"
    with pytest.raises(InvalidSpec) as no_classes:
        item_spec(shared, {"video_url": URL}, 7)
    assert no_classes.value.field == "items[7].spec"
    with pytest.raises(InvalidSpec) as unknown:
        item_spec({}, {"video_url": URL, "colour": 1}, 3)
    assert unknown.value.field == "items[3].colour"


def test_an_item_without_a_job_is_counted_once_however_often_it_is_settled(
    jobs: Lifecycle,
) -> None:
    store = BatchStore(jobs.store)
    record, _ = store.create(
        BatchRecord(id=new_batch_id(), tenant="acme", total=2, spec={}), [{}, {}]
    )
    error = ItemError(code="invalid_spec", message="items[0]: bad", field="items[0]")
    assert store.settle(record.id, 0, error=error) is True
    assert store.settle(record.id, 0, error=error) is False
    assert store.settle(record.id, 1) is True
    assert store.complete(record.id) is False, "the items were never marked expanded"
    store.set_expanded(record.id, 2)
    assert store.complete(record.id) is True and store.complete(record.id) is False
    counts = store.summary(record).counts
    assert (counts.failed, counts.invalid, counts.canceled, counts.pending) == (1, 1, 1, 0)
    assert store.open_ids() == []


def test_a_folder_or_list_becomes_the_sources_of_a_batch(tmp_path: Path) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("b.mp4", "a.MOV", "notes.txt"):
        (folder / name).write_bytes(b"video bytes " + name.encode())
    assert [s.ref for s in batch.sources_of(folder)] == ["a.MOV", "b.mp4"]
    listed = tmp_path / "list.txt"
    listed.write_text("# clips\nclips/b.mp4\n\nhttps://example.com/c.mp4\n")
    sources = batch.sources_of(listed)
    assert sources[0].path == folder / "b.mp4" and sources[1].url == "https://example.com/c.mp4"
    with batch.served(sources, "127.0.0.1") as urls:
        assert urls["https://example.com/c.mp4"] == "https://example.com/c.mp4"
        assert httpx.get(urls["clips/b.mp4"]).content == b"video bytes b.mp4"
        assert httpx.get(urls["clips/b.mp4"].rsplit("/", 3)[0] + "/0/b.mp4").status_code == 404
    listed.write_text("clips/missing.mp4\n")
    with pytest.raises(batch.BatchInputError, match="missing.mp4: no such file"):
        batch.sources_of(listed)
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    with pytest.raises(batch.BatchInputError, match="holds no videos"):
        batch.sources_of(tmp_path / "empty.txt")


def test_the_batch_bar_is_one_line_redrawn() -> None:
    out = io.StringIO()
    bar = batch.BatchBar(out, width=10)
    counts = {"queued": 1, "running": 1, "succeeded": 1, "failed": 1, "canceled": 0}
    bar({"status": "running", "total": 4, "progress": 0.5, "counts": counts})
    bar(
        {
            "status": "completed",
            "total": 4,
            "progress": 1.0,
            "counts": {**counts, "succeeded": 3, "running": 0, "queued": 0},
        }
    )
    assert out.getvalue().count("\r") == 2 and out.getvalue().endswith("\n")
    assert "2/4 ended, 1 running, 1 failed" in out.getvalue()


def test_a_batch_without_a_webhook_queues_no_delivery(jobs: Lifecycle) -> None:
    batches = Batches(jobs)
    record, _ = batches.submit("acme", request([{"video_url": "ftp://example.com/a.mp4"}]))
    run(batches, record.id)
    assert batches.view(record).status == "completed"
    assert recording(jobs).events(record.id) == []
