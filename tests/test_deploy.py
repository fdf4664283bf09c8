"""The deployment files in deploy/ and the Dockerfile are what they claim, checked offline.

A person deploys them to AWS Batch or Kubernetes without this suite ever seeing either, so each file
is held to what its platform would hold it to: the Kubernetes manifests to Kubernetes' own schemas
(kubernetes-validate ships them), the Batch job definition and submission to botocore's model of
RegisterJobDefinition and SubmitJob (the model the AWS CLI sends them with). Then each platform's
command line is run as that platform would run it: one process per array child or pod, all at once,
each with the index variable its platform sets and the source credentials in the environment
variable the entry point writes to a file, against SeaweedFS. Together they must copy the bucket
exactly once, with the exit codes the retry rules of the files expect.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import botocore.session
import botocore.validate
import pytest
from s3servers import STATE_BUCKET, SeaweedServer
from test_cross_account import CrossAccount
from toolcli import RUN_TIMEOUT, copied_keys, describe, run_tool

import s3_bulk_transfer as tool

yaml = pytest.importorskip("yaml")  # both come with kubernetes-validate (requirements-dev.txt); the
kubernetes_validate = pytest.importorskip("kubernetes_validate")  # dependency-floor pass has neither

pytestmark = pytest.mark.engine_independent  # which engine moves the bodies is no concern of a manifest

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOY = REPO_ROOT / "deploy"
ENTRYPOINT = DEPLOY / "entrypoint.sh"
KUBERNETES_JOB = DEPLOY / "kubernetes" / "indexed-job.yaml"
BATCH_JOB_DEFINITION = DEPLOY / "batch" / "job-definition.json"
BATCH_SUBMISSION = DEPLOY / "batch" / "submit-job.json"
# The oldest Kubernetes whose Job has every field the manifest uses as stable or on by default
# (backoffLimitPerIndex, podFailurePolicy's FailIndex: beta from 1.29, GA in 1.33), and the newest.
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def kubernetes_documents() -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(KUBERNETES_JOB.read_text()) if document]


def indexed_job() -> dict[str, Any]:
    return next(document for document in kubernetes_documents() if document["kind"] == "Job")


def batch_files() -> tuple[dict[str, Any], dict[str, Any]]:
    return json.loads(BATCH_JOB_DEFINITION.read_text()), json.loads(BATCH_SUBMISSION.read_text())


def batch_command(definition: dict[str, Any], submission: dict[str, Any]) -> list[str]:
    """The child's command once Batch has substituted Ref::NAME: the submission's parameters over the
    definition's defaults, each Ref:: a whole argument (Batch's rule)."""
    parameters = {**definition.get("parameters", {}), **submission.get("parameters", {})}
    command = submission.get("containerOverrides", {}).get("command") or definition["containerProperties"]["command"]
    return [parameters[word[len("Ref::"):]] if word.startswith("Ref::") else word for word in command]


def shards_of(arguments: list[str]) -> int:
    """N of the command line's --shard auto/N, as the tool reads it."""
    args = tool.build_parser().parse_args(arguments)
    assert args.shard.startswith("auto/"), "every child or pod runs the same command: the index comes from its variable"
    return int(args.shard.split("/")[1])


# -- the files are valid on their platforms ------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_manifests_are_valid_kubernetes_objects(version: str) -> None:
    documents = kubernetes_documents()
    assert {document["kind"] for document in documents} >= {"Job", "ServiceAccount", "Secret", "PersistentVolumeClaim"}
    for document in documents:
        kubernetes_validate.validate(document, version, strict=True)  # raises, naming the field, if not


def test_the_indexed_job_runs_one_shard_per_completion_and_stops_a_shard_on_a_mistake() -> None:
    job = indexed_job()
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert spec["completionMode"] == "Indexed"
    assert shards_of(container["args"]) == spec["completions"]
    # Exit 2 (usage, configuration, a refused permission) fails that index; anything else is retried.
    (mistake,) = [rule for rule in spec["podFailurePolicy"]["rules"] if rule["action"] == "FailIndex"]
    assert mistake["onExitCodes"]["values"] == [tool.EXIT_USAGE]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    # The state folder is the shared volume, and the credentials file is where the entry point writes it.
    args = tool.build_parser().parse_args(container["args"])
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    claims = {volume["name"]: volume for volume in pod["volumes"]}
    state = mounts[str(Path(args.progress_file).parent)]
    assert "persistentVolumeClaim" in claims[state] and str(Path(args.log_file).parent) in mounts
    assert args.source_credentials == "/tmp/source_credentials.json" and "/tmp" in mounts
    claim = next(document for document in kubernetes_documents() if document["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod, on any node, sees the plan
    (secret_env,) = [variable for variable in container["env"] if variable["name"] == "S3BT_SOURCE_CREDENTIALS_JSON"]
    secret = next(document for document in kubernetes_documents() if document["kind"] == "Secret")
    assert secret_env["valueFrom"]["secretKeyRef"]["key"] in secret["stringData"]
    json.loads(secret["stringData"][secret_env["valueFrom"]["secretKeyRef"]["key"]])  # a credentials file


def test_the_batch_job_definition_and_submission_are_valid_batch_requests() -> None:
    model = botocore.session.get_session().get_service_model("batch")
    definition, submission = batch_files()
    for operation, request in (("RegisterJobDefinition", definition), ("SubmitJob", submission)):
        report = botocore.validate.ParamValidator().validate(request, model.operation_model(operation).input_shape)
        assert not report.has_errors(), f"{operation}: {report.generate_report()}"
    assert submission["jobDefinition"] == definition["jobDefinitionName"]
    assert shards_of(batch_command(definition, submission)) == submission["arrayProperties"]["size"]
    # A mistake (exit 2) is not retried: Batch retries what matches no rule, so every other exit is.
    assert definition["retryStrategy"]["evaluateOnExit"] == [{"onExitCode": str(tool.EXIT_USAGE), "action": "EXIT"}]
    args = tool.build_parser().parse_args(batch_command(definition, submission))
    # Fargate gives a child no disk that outlives it: the state is in a bucket, the log in its own /tmp
    # (and its console output in CloudWatch Logs).
    assert isinstance(args.progress_file, tool.S3StatePath) and str(args.log_file).startswith("/tmp/")
    assert "mountPoints" not in definition["containerProperties"]
    secrets = {secret["name"] for secret in definition["containerProperties"]["secrets"]}
    assert "S3BT_SOURCE_CREDENTIALS_JSON" in secrets and args.source_credentials == "/tmp/source_credentials.json"


def test_the_iam_policies_are_the_readmes_and_well_formed() -> None:
    readme_policies = [json.loads(block) for block in
                       re.findall(r"^```json\n(\{\n  \"Version\".*?)^```", (REPO_ROOT / "README.md").read_text(),
                                  re.MULTILINE | re.DOTALL)]
    files = {path.name: json.loads(path.read_text()) for path in sorted((DEPLOY / "iam").glob("*.json"))}
    assert readme_policies == [files["source-policy.json"], files["destination-policy.json"]]
    for name, policy in files.items():
        assert policy["Version"] == "2012-10-17", name
        for statement in policy["Statement"]:
            assert statement["Effect"] in ("Allow", "Deny"), name
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert all(re.fullmatch(r"[a-z0-9-]+:[A-Za-z]+", action) for action in actions), (name, actions)
    # The roles the deployment files name are the ones the trust policies are about.
    definition, _ = batch_files()
    job_role = definition["containerProperties"]["jobRoleArn"]
    assert files["source-role-trust.json"]["Statement"][0]["Principal"]["AWS"] == job_role
    assert indexed_job()["metadata"]["name"] in json.dumps(files["job-role-trust-eks.json"])


def test_the_dockerfile_copies_what_exists_and_enters_by_the_entry_point() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copied = [word for line in re.findall(r"^COPY (.+)$", dockerfile, re.MULTILINE) for word in line.split()[:-1]]
    allowed = [line[1:] for line in (REPO_ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")]
    assert copied and all((REPO_ROOT / path).is_file() for path in copied), copied
    assert sorted(copied) == sorted(allowed)  # the build context holds these and nothing else
    assert re.search(r'^ENTRYPOINT \["/app/entrypoint.sh"\]$', dockerfile, re.MULTILINE)
    assert "deploy/entrypoint.sh" in copied and os.access(ENTRYPOINT, os.X_OK)
    assert re.search(r"^USER 10001$", dockerfile, re.MULTILINE)  # the uid the Kubernetes manifest runs as
    assert indexed_job()["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 10001


# -- the command lines, run as their platforms run them ------------------------------------------

FOLDERS, KEYS_PER_FOLDER = 12, 25  # 300 keys in 12 folders: enough places to cut for 8 shards


@pytest.fixture
def accounts(seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path) -> CrossAccount:
    return CrossAccount(server=seaweed, prefix=f"deploy-{uuid.uuid4().hex[:10]}/", workdir=tmp_path,
                        base_env=tool_env)


def on_this_machine(arguments: list[str], accounts: CrossAccount, state: Path, tmp: Path) -> list[str]:
    """The platform's command line with the placeholders a person replaces (the buckets) and the
    container's paths (/state, the shared volume; /tmp, the pod's own) pointed at this test's."""
    replaced = []
    for word in arguments:
        word = {"s3://SOURCE-BUCKET": accounts.source_uri, "s3://DEST-BUCKET": accounts.destination_uri}.get(word, word)
        word = word.replace("s3://your-state-bucket/s3-bulk-transfer/", state_uri(accounts))
        if word.startswith("/state/"):
            word = str(state / word[len("/state/"):])
        elif word.startswith("/tmp/"):
            word = str(tmp / word[len("/tmp/"):])
        replaced.append(word)
    return [*replaced, "--dest-endpoint-url", accounts.server.endpoint_url]


def state_uri(accounts: CrossAccount) -> str:
    """Where this test's job keeps its state when its command line names the state bucket."""
    return f"s3://{STATE_BUCKET}/{accounts.prefix}"


def state_object(accounts: CrossAccount, name: str) -> bytes:
    return accounts.server.client(accounts.server.admin).get_object(
        Bucket=STATE_BUCKET, Key=accounts.prefix + name)["Body"].read()


def run_as_the_platform_would(accounts: CrossAccount, arguments: list[str], index_variable: str,
                              shards: int) -> tuple[list[int], Path]:
    """One process per child or pod, all started at once through the entry point, each with its
    index and the source credentials in the variable the platform fills from its secret."""
    source = accounts.server.source
    secret = json.dumps({"aws_access_key_id": source.access_key, "aws_secret_access_key": source.secret_key,
                         "endpoint_url": accounts.server.endpoint_url})
    state = accounts.workdir / "state"
    state.mkdir()
    processes = []
    for index in range(shards):
        tmp = accounts.workdir / f"tmp-{index}"  # each pod's own /tmp
        tmp.mkdir()
        env = {**accounts.base_env, "AWS_ACCESS_KEY_ID": accounts.server.dest.access_key,
               "AWS_SECRET_ACCESS_KEY": accounts.server.dest.secret_key, index_variable: str(index),
               "S3BT_SOURCE_CREDENTIALS_JSON": secret, "S3BT_TOOL": str(REPO_ROOT / "s3_bulk_transfer.py"),
               "S3BT_SOURCE_CREDENTIALS_FILE": str(tmp / "source_credentials.json")}
        processes.append(subprocess.Popen([str(ENTRYPOINT), *on_this_machine(arguments, accounts, state, tmp)],
                                          env=env, cwd=accounts.workdir, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    with concurrent.futures.ThreadPoolExecutor(len(processes)) as pool:
        outputs = list(pool.map(lambda process: process.communicate(timeout=RUN_TIMEOUT)[0], processes))
    codes = [process.returncode for process in processes]
    assert codes == [0] * shards, "\n".join(f"--- shard {index}: exit {code}\n{output}"
                                           for index, (code, output) in enumerate(zip(codes, outputs)))
    for index in range(shards):
        credentials = accounts.workdir / f"tmp-{index}" / "source_credentials.json"
        assert stat.S_IMODE(credentials.stat().st_mode) == 0o600  # written owner-only, as the README asks
    return codes, state


def assert_copied_once(accounts: CrossAccount, names: list[str], state: Path, shards: int, *,
                       in_bucket: bool = False) -> None:
    """Every key copied by exactly one shard, and the job complete by its state: in the shared
    folder `state` (the pods' logs there too), or `in_bucket` (each child's log in its own /tmp)."""
    assert accounts.destination_snapshot() == accounts.source_snapshot()
    assert accounts.destination_uploads() == []
    found = sorted((accounts.workdir.glob("tmp-*/") if in_bucket else [state]), key=str)
    logs = [set(copied_keys(log.read_text())) for folder in found
            for log in folder.glob(f"s3_transfer.shard-*-of-{shards}.log")]
    assert len(logs) == shards and sum(map(len, logs)) == len(names)  # no key copied by two shards
    plan_name = f"transfer_progress.plan-of-{shards}-shards.json"
    plan = json.loads(state_object(accounts, plan_name) if in_bucket else (state / plan_name).read_bytes())["plan"]
    # One page of keys has nowhere worth cutting, so the shards split it by hash (tests/test_shards.py
    # has a bucket of key ranges); either way the plan is the one every pod read from the shared state.
    assert plan["shards"] == shards and plan["split"] == "hash"
    if in_bucket:
        assert not list(state.iterdir()), "a child kept state on a disk of its own"
        env = {**accounts.base_env, "AWS_ACCESS_KEY_ID": accounts.server.dest.access_key,
               "AWS_SECRET_ACCESS_KEY": accounts.server.dest.secret_key}
        status = run_tool(["status", state_uri(accounts), "--endpoint-url", accounts.server.endpoint_url], env=env,
                          cwd=state)
    else:
        status = run_tool(["status", str(state / "transfer_progress.json")], env={}, cwd=state)
    assert status.returncode == 0, describe(status)
    assert re.search(rf"total\s+{len(names):,}\s.*\s{shards} complete$", status.stdout, re.MULTILINE), describe(status)


def fill(accounts: CrossAccount) -> list[str]:
    names = [f"d{folder:02d}/{index:02d}.bin" for folder in range(FOLDERS) for index in range(KEYS_PER_FOLDER)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda name: accounts.put(name, f"{name} ".encode() * 50), names))
    return names


def test_the_indexed_jobs_pods_copy_the_bucket_once(accounts: CrossAccount) -> None:
    names = fill(accounts)
    job = indexed_job()
    container = job["spec"]["template"]["spec"]["containers"][0]

    _, state = run_as_the_platform_would(accounts, container["args"], "JOB_COMPLETION_INDEX",
                                         job["spec"]["completions"])

    assert_copied_once(accounts, names, state, job["spec"]["completions"])


def test_the_batch_array_jobs_children_copy_the_bucket_once(accounts: CrossAccount) -> None:
    names = fill(accounts)
    definition, submission = batch_files()

    _, state = run_as_the_platform_would(accounts, batch_command(definition, submission),
                                         "AWS_BATCH_JOB_ARRAY_INDEX", submission["arrayProperties"]["size"])

    assert_copied_once(accounts, names, state, submission["arrayProperties"]["size"], in_bucket=True)
