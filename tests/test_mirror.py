"""--delete: a destination that mirrors the source, removing what the source no longer has.

What a person relies on: after a complete copy exactly the destination keys the source lacks go
(each logged, counted in the report), none outside the destination prefix or left out by the
filters; nothing at all when a copy failed; --dry-run --delete lists what would go and deletes
nothing; --max-delete stops before anything is written when more would go; a kill during the
deletions is finished by the rerun; and the options it cannot work with are one sentence. moto.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from aws_behaviour import Hold, operation_is
from conftest import FAKE_KEYS
from fault_proxy import FaultProxy
from s3servers import DEST_BUCKET, MotoBuckets, SeaweedServer, object_snapshot, put_objects
from test_cross_account import CrossAccount
from toolcli import ToolJob, assert_usage_error, describe, write_source_credentials

SOURCE = {"keep/a.txt": b"a", "keep/b.txt": b"b", "c.txt": b"c", "skip.log": b"source log"}
# In the destination before the run: an old copy of a source key, two keys the source lacks, one the
# filters leave out, and one outside the destination prefix.
DESTINATION = {"mirror/keep/a.txt": b"old a", "mirror/gone/x.txt": b"x", "mirror/gone/y.txt": b"y",
               "mirror/local.log": b"excluded by the filter", "elsewhere/z.txt": b"not under the prefix"}
EXCLUDE = ["--exclude", "*.log"]


def prepare(buckets: MotoBuckets) -> None:
    put_objects(buckets.client, buckets.source, SOURCE)
    put_objects(buckets.client, buckets.dest, DESTINATION)


def destination_keys(buckets: MotoBuckets) -> list[str]:
    return sorted(object_snapshot(buckets.client, buckets.dest))


def test_a_complete_copy_then_deletes_exactly_what_the_source_lacks(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    prepare(moto_buckets)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", "--delete", *EXCLUDE,
                     "--verify")

    assert result.returncode == 0, describe(result)
    assert destination_keys(moto_buckets) == ["elsewhere/z.txt", "mirror/c.txt", "mirror/keep/a.txt",
                                              "mirror/keep/b.txt", "mirror/local.log"]
    assert moto_buckets.client.get_object(Bucket=moto_buckets.dest, Key="mirror/keep/a.txt")["Body"].read() == b"a"
    log = job.log_text()
    assert log.count("(not in the source)") == 2
    assert 'deleted "mirror/gone/x.txt" (not in the source)' in log and '"mirror/gone/y.txt"' in log
    assert "deleted 2 objects the source no longer has" in result.stdout
    assert "0 only in the destination" in result.stdout + result.stderr  # the --verify after the deletions


def test_a_dry_run_lists_what_would_go_and_deletes_nothing(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    prepare(moto_buckets)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", "--delete", "--dry-run",
                     *EXCLUDE)

    assert result.returncode == 0, describe(result)
    assert 'would delete "mirror/gone/x.txt" (not in the source)' in result.stdout
    assert 'would delete "mirror/gone/y.txt" (not in the source)' in result.stdout
    assert "would delete 2 objects the source no longer has" in result.stdout
    assert destination_keys(moto_buckets) == sorted(DESTINATION)


def test_nothing_is_deleted_when_a_copy_failed(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    prepare(moto_buckets)
    # A key S3 cannot take under this prefix (a ".." segment): that object fails, the others are copied.
    put_objects(moto_buckets.client, moto_buckets.source, {"bad/../escape.txt": b"e"})

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", "--delete", *EXCLUDE)

    assert result.returncode == 1, describe(result)
    assert "Not deleting anything (--delete): the copy did not complete" in result.stderr
    assert {"mirror/gone/x.txt", "mirror/gone/y.txt"} <= set(destination_keys(moto_buckets))


def test_more_deletions_than_max_delete_stop_the_run_before_anything_is_written(
        job: ToolJob, moto_buckets: MotoBuckets) -> None:
    prepare(moto_buckets)

    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", "--delete", "--max-delete",
                     "1", *EXCLUDE)

    assert_usage_error(result, "More than --max-delete 1 destination objects under")
    assert destination_keys(moto_buckets) == sorted(DESTINATION)  # nothing copied, nothing deleted
    assert moto_buckets.client.get_object(Bucket=moto_buckets.dest, Key="mirror/keep/a.txt")["Body"].read() == b"old a"
    allowed = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", "--delete", "--max-delete",
                      "2", *EXCLUDE)
    assert allowed.returncode == 0, describe(allowed)
    assert "mirror/gone/x.txt" not in destination_keys(moto_buckets)


def test_a_kill_during_the_deletions_is_finished_by_the_rerun(job: ToolJob, moto_buckets: MotoBuckets) -> None:
    prepare(moto_buckets)
    with FaultProxy(moto_buckets.endpoint_url) as proxy:
        # S3 carries the DeleteObjects out, and the tool is killed before its answer arrives.
        hold = Hold(operation_is("DeleteObjects"), answer_trigger=False)
        proxy.behave(hold)
        write_source_credentials(job.credentials, FAKE_KEYS, proxy.endpoint_url)
        job.dest_endpoint_url = proxy.endpoint_url
        process = job.start(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", "--delete", *EXCLUDE)
        job.wait_for(process, hold.triggered.is_set, "the DeleteObjects was sent")
        process.kill()
        process.wait()
        proxy.behave_only()
        copies_before = len(proxy.counts.operations("PutObject"))
        rerun = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", "--delete", *EXCLUDE)
        copies_again = len(proxy.counts.operations("PutObject")) - copies_before

    assert rerun.returncode == 0, describe(rerun)
    assert destination_keys(moto_buckets) == ["elsewhere/z.txt", "mirror/c.txt", "mirror/keep/a.txt",
                                              "mirror/keep/b.txt", "mirror/local.log"]
    assert copies_again == 0  # the copy was complete: the rerun only finished the mirroring
    assert "deleted 0 objects the source no longer has" in rerun.stdout  # S3 had carried them out


@pytest.mark.parametrize(("options", "sentence"), [
    (["--max-delete", "5"], "--max-delete limits --delete, which is not given"),
    (["--delete", "--max-delete", "-1"], "--max-delete must be 0 or more"),
    (["--delete", "--verify-only"], "--verify-only copies and deletes nothing"),
    (["--delete", "--older-than", "30d"], "--delete with --older-than: a destination object whose source is gone"),
    (["--delete", "--from-inventory", "keys.txt"], "--delete judges by what the source holds now"),
])
def test_what_delete_cannot_work_with_is_one_sentence(job: ToolJob, moto_buckets: MotoBuckets,
                                                      options: list[str], sentence: str) -> None:
    prepare(moto_buckets)
    (job.workdir / "keys.txt").write_text("keep/a.txt\n")
    options = [str(job.workdir / word) if word == "keys.txt" else word for word in options]
    result = job.run(f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}/mirror", *options)
    assert_usage_error(result, sentence)
    assert destination_keys(moto_buckets) == sorted(DESTINATION)


def test_the_destination_account_mirrors_on_a_real_server(seaweed: SeaweedServer, tool_env: dict[str, str],
                                                          tmp_path: Path) -> None:
    # SeaweedFS with the two accounts' identities: DeleteObjects as a real server takes it (its
    # integrity header included), by the destination's own keys.
    accounts = CrossAccount(server=seaweed, prefix=f"mirror-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                            base_env=tool_env)
    for name, data in SOURCE.items():
        accounts.put(name, data)
    admin = seaweed.client(seaweed.admin)
    for key, data in DESTINATION.items():
        admin.put_object(Bucket=DEST_BUCKET, Key=accounts.prefix + key, Body=data)
    job = accounts.job(seaweed.source, seaweed.dest)

    result = job.run(accounts.source_uri, f"{accounts.destination_uri}mirror", "--delete", *EXCLUDE)

    assert result.returncode == 0, describe(result)
    assert sorted(accounts.destination_snapshot()) == ["elsewhere/z.txt", "mirror/c.txt", "mirror/keep/a.txt",
                                                       "mirror/keep/b.txt", "mirror/local.log"]
