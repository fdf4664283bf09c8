"""Issue #6, "Security": secrets stay secret, files are owner-only, TLS is always verified.

* Every output of a run (stdout, stderr, the log, the progress file, the --report file) is scanned
  for recognisable fake secrets put in the source credentials file and the destination's
  environment, in runs that succeed, that fail objects, that are refused for a wrong secret key,
  and that only plan or compare; all with -v, which logs debug detail.
* The log, the progress file and the --report file hold bucket and key names: they are created
  readable by the owner only under a umask (022) that lets everybody read new files, and stay so
  when a second run rewrites them.
* An HTTPS endpoint with a certificate nobody vouches for is refused with one sentence saying how to
  trust it (AWS_CA_BUNDLE), and trusting it that way makes the same run work: verification is on.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import select
import socket
import ssl
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import FAKE_KEYS
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from s3servers import (
    DEST_BUCKET,
    LOOPBACK,
    SOURCE_BUCKET,
    Identity,
    MotoBuckets,
    SeaweedServer,
    incomplete_uploads,
    object_snapshot,
)
from toolcli import (
    RUN_TIMEOUT,
    TOOL,
    ToolJob,
    assert_usage_error,
    describe,
    error_lines,
    read_progress,
    write_source_credentials,
)
from units import MIB

# Recognisable, and new for every test session, so a match can only be a leak from this run.
SOURCE_SECRET = f"SECRETsecretSECRET-{os.urandom(12).hex()}"
SOURCE_TOKEN = f"TOKENtokenTOKEN-{os.urandom(12).hex()}"
DEST_SECRET = f"DSECRETdsecretDSECRET-{os.urandom(12).hex()}"
DEST_TOKEN = f"DTOKENdtokenDTOKEN-{os.urandom(12).hex()}"
SECRETS = (SOURCE_SECRET, SOURCE_TOKEN, DEST_SECRET, DEST_TOKEN)
LEAK_WINDOW = 8  # characters: any 8 consecutive characters of a secret count as a (partial) leak


# -- a TLS endpoint on 127.0.0.1 with a self-signed certificate ---------------------------------


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for IP 127.0.0.1 signed by its own key; returns (certificate, key) PEM files.

    It is its own CA (basicConstraints CA, keyCertSign), so AWS_CA_BUNDLE can name it as the
    trust anchor, as a person does for a private endpoint."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "s3-bulk-transfer test endpoint")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    certificate_path = directory / "endpoint-ca.pem"
    key_path = directory / "endpoint-key.pem"
    certificate_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return certificate_path, key_path


class TlsForwarder:
    """Terminates TLS on a free 127.0.0.1 port and passes the plain bytes to a local HTTP server.

    One thread accepts; each connection gets a thread that shuttles bytes both ways. A client that
    refuses the certificate just ends its connection, which the connection's thread shrugs off."""

    def __init__(self, target_url: str, certificate: Path, key: Path) -> None:
        host, port = target_url.removeprefix("http://").rstrip("/").split(":")
        self._target = (host, int(port))
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(certificate, key)
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.2)
        self._stopping = threading.Event()
        self.endpoint_url = f"https://{LOOPBACK}:{self._listener.getsockname()[1]}"
        self.handshakes_refused = 0
        self.connections_served = 0
        self._thread = threading.Thread(target=self._accept, name="tls-forwarder", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            connection.settimeout(10)
            tls = self._context.wrap_socket(connection, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_refused += 1
            connection.close()
            return
        self.connections_served += 1
        try:
            with tls, socket.create_connection(self._target, timeout=10) as upstream:
                tls.settimeout(None)
                self._shuttle(tls, upstream)
        except OSError:
            pass

    def _shuttle(self, tls: ssl.SSLSocket, upstream: socket.socket) -> None:
        while not self._stopping.is_set():
            # An SSL socket may hold decrypted bytes select() cannot see: read those first.
            readable = [tls] if tls.pending() else select.select([tls, upstream], [], [], 0.5)[0]
            for source in readable:
                data = source.recv(256 * 1024)
                if not data:
                    return
                (upstream if source is tls else tls).sendall(data)

    def stop(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._thread.join(timeout=5)


@pytest.fixture
def tls_endpoint(moto_buckets: MotoBuckets, tmp_path: Path) -> Iterator[tuple[TlsForwarder, Path]]:
    """moto behind HTTPS with a self-signed certificate; yields the endpoint and the certificate file."""
    certificate, key = self_signed_certificate(tmp_path)
    forwarder = TlsForwarder(moto_buckets.endpoint_url, certificate, key)
    try:
        yield forwarder, certificate
    finally:
        forwarder.stop()


# -- helpers ------------------------------------------------------------------------------------


def leaks(text: str) -> list[str]:
    """The secrets of which ``text`` holds the whole or any LEAK_WINDOW consecutive characters."""
    return [secret for secret in SECRETS
            if any(secret[start:start + LEAK_WINDOW] in text for start in range(len(secret) - LEAK_WINDOW + 1))]


def assert_no_secret_anywhere(result: subprocess.CompletedProcess[str], outputs: Path) -> None:
    """Neither the terminal nor any file the run wrote under ``outputs`` shows a secret, whole or in part."""
    assert leaks(result.stdout) == [], f"secret on stdout\n{describe(result)}"
    assert leaks(result.stderr) == [], f"secret on stderr\n{describe(result)}"
    written = [path for path in outputs.rglob("*") if path.is_file()]
    assert written, "the run wrote no file at all: the scan would prove nothing"
    for path in written:
        assert leaks(path.read_text(encoding="utf-8", errors="replace")) == [], f"secret in {path.name}"


def secret_job(tmp_path: Path, env: dict[str, str], *, source: Identity, source_endpoint: str,
               dest_access_key: str, dest_endpoint: str) -> ToolJob:
    """A job whose source keys (``source``, with SOURCE_TOKEN) come from a credentials file and whose
    destination keys come from the environment, with DEST_SECRET and DEST_TOKEN. Everything the tool
    writes goes to ``tmp_path / "outputs"``; the credentials file lies outside it."""
    credentials = write_source_credentials(tmp_path / "source-credentials.json", source, source_endpoint,
                                           aws_session_token=SOURCE_TOKEN)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    env = {**env, "AWS_ACCESS_KEY_ID": dest_access_key, "AWS_SECRET_ACCESS_KEY": DEST_SECRET,
           "AWS_SESSION_TOKEN": DEST_TOKEN}
    return ToolJob(workdir=outputs, env=env, credentials=credentials, dest_endpoint_url=dest_endpoint)


def fill_source(buckets: MotoBuckets) -> None:
    """Small objects with metadata and tags, and one of 7 MiB, which goes in two parts of 5 MiB."""
    client = buckets.client
    for key in ("ok/a.txt", "ok/dir/b.json"):
        client.put_object(Bucket=buckets.source, Key=key, Body=f"body of {key}".encode(), Metadata={"k": "v"},
                          Tagging="t=1")
    client.put_object(Bucket=buckets.source, Key="ok/large.bin", Body=os.urandom(7 * MIB))


# -- 1. secrets never appear in any output ------------------------------------------------------


def test_no_secret_in_any_output_of_copies_failures_dry_runs_and_audits(
    moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path
) -> None:
    fill_source(moto_buckets)
    # Archived and not restored: its GET is refused, so the object fails.
    moto_buckets.client.put_object(Bucket=moto_buckets.source, Key="cold/archived.bin", Body=b"frozen",
                                   StorageClass="GLACIER")
    job = secret_job(tmp_path, tool_env, source=Identity("SOURCEKEYID", SOURCE_SECRET),
                     source_endpoint=moto_buckets.endpoint_url, dest_access_key="DESTKEYID",
                     dest_endpoint=moto_buckets.endpoint_url)
    source, destination = f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}"
    missing_bucket = f"s3://no-such-bucket-{os.urandom(4).hex()}"
    outputs = job.workdir

    def run(name: str, *extra: str, to: str = destination) -> subprocess.CompletedProcess[str]:
        """One run with -v, with a progress file of its own (the runs differ in filters and options)."""
        result = job.run(source, to, "-v", "--progress-file", str(outputs / f"progress-{name}.json"), *extra)
        assert_no_secret_anywhere(result, outputs)
        return result

    planned = run("plan", "--dry-run")
    assert planned.returncode == 0, describe(planned)

    # S3 refuses every upload: botocore's own exception text becomes each object's reason.
    refused = run("refused", "--storage-class", "NO_SUCH_CLASS")
    assert refused.returncode == 1, describe(refused)
    reasons = read_progress(outputs / "progress-refused.json")["resume"]["failed"]
    assert "InvalidStorageClass" in reasons["ok/large.bin"], reasons

    copied = run("copy", "--exclude", "cold/*", "--verify", "--report", str(outputs / "report-copy.json"))
    assert copied.returncode == 0, describe(copied)
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == object_snapshot(
        moto_buckets.client, moto_buckets.source, "ok/")
    assert (outputs / "report-copy.json").is_file()

    archived = run("archived")
    assert archived.returncode == 1, describe(archived)
    assert list(read_progress(outputs / "progress-archived.json")["resume"]["failed"]) == ["cold/archived.bin"]

    audited = run("audit", "--verify-only", "--report", str(outputs / "report-audit.json"))
    assert audited.returncode == 1, describe(audited)  # the archived object is missing

    missing = run("missing", to=missing_bucket)
    assert missing.returncode == 2 and "does not exist" in " ".join(error_lines(missing.stderr)), describe(missing)


@pytest.mark.parametrize("wrong_side", ["source", "destination"])
@pytest.mark.parametrize("with_token", [False, True], ids=["keys", "keys+token"])
def test_no_secret_in_any_output_when_a_secret_key_is_refused(
    seaweed: SeaweedServer, tool_env: dict[str, str], tmp_path: Path, wrong_side: str, with_token: bool
) -> None:
    """SeaweedFS checks signatures: a wrong secret key gives SignatureDoesNotMatch (whose answer on AWS
    echoes what was signed, session token included), and a session token it never issued gets the keys
    refused as unknown. The error path must pass none of it on."""
    job = secret_job(tmp_path, tool_env, source=seaweed.source, source_endpoint=seaweed.endpoint_url,
                     dest_access_key=seaweed.dest.access_key, dest_endpoint=seaweed.endpoint_url)
    # The side that is not under test gets its real keys and no token, so the run gets as far as the other.
    if wrong_side == "source":
        token = {"aws_session_token": SOURCE_TOKEN} if with_token else {}
        write_source_credentials(job.credentials, Identity(seaweed.source.access_key, SOURCE_SECRET),
                                 seaweed.endpoint_url, **token)
        job.env["AWS_SECRET_ACCESS_KEY"] = seaweed.dest.secret_key
        del job.env["AWS_SESSION_TOKEN"]
    else:
        write_source_credentials(job.credentials, seaweed.source, seaweed.endpoint_url)
        if not with_token:
            del job.env["AWS_SESSION_TOKEN"]

    result = job.run(f"s3://{SOURCE_BUCKET}/security-{os.urandom(4).hex()}", f"s3://{DEST_BUCKET}/security", "-v")

    assert result.returncode == 2, describe(result)
    why = "were refused" if with_token else "were refused: the secret key does not match"
    assert [line for line in error_lines(result.stderr) if f"The {wrong_side} credentials" in line and why in line], \
        describe(result)
    assert_no_secret_anywhere(result, job.workdir)


# -- 2. the files the tool writes are owner-only ------------------------------------------------


def run_with_umask(job: ToolJob, umask: int, *args: str) -> subprocess.CompletedProcess[str]:
    """The tool as started from a shell whose umask lets everybody read new files."""
    return subprocess.run([sys.executable, str(TOOL), *job.args(*args)], check=False, env=job.env, cwd=job.workdir,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT, umask=umask)


def test_log_progress_and_report_files_are_owner_only_and_stay_so(
    moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path
) -> None:
    fill_source(moto_buckets)
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, moto_buckets.endpoint_url)
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    job = ToolJob(workdir=outputs, env=tool_env, credentials=credentials, dest_endpoint_url=moto_buckets.endpoint_url)
    report = outputs / "report.json"
    command = (f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}", "--verify", "--report", str(report))

    def modes() -> dict[str, str]:
        """Every file the tool wrote (the lock beside the progress file too), with its permission bits."""
        return {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in outputs.iterdir()}

    first = run_with_umask(job, 0o022, *command)

    assert first.returncode == 0, describe(first)
    assert {job.log_file.name, job.progress_file.name, report.name} <= set(modes())
    assert modes() == {name: oct(0o600) for name in modes()}
    # The rerun finds everything done, and replaces the progress file and the report all the same.
    progress_before = job.progress_file.stat().st_mtime_ns

    second = run_with_umask(job, 0o022, *command)

    assert second.returncode == 0, describe(second)
    assert job.progress_file.stat().st_mtime_ns != progress_before, "the rerun did not rewrite the progress file"
    assert modes() == {name: oct(0o600) for name in modes()}


# -- 3. TLS certificates are always verified ----------------------------------------------------


def test_an_unverifiable_certificate_stops_the_run_and_aws_ca_bundle_makes_it_work(
    moto_buckets: MotoBuckets, tool_env: dict[str, str], tmp_path: Path, tls_endpoint: tuple[TlsForwarder, Path]
) -> None:
    forwarder, certificate = tls_endpoint
    fill_source(moto_buckets)
    source_before = object_snapshot(moto_buckets.client, moto_buckets.source)
    credentials = write_source_credentials(tmp_path / "source-credentials.json", FAKE_KEYS, moto_buckets.endpoint_url)
    job = ToolJob(workdir=tmp_path, env=tool_env, credentials=credentials, dest_endpoint_url=forwarder.endpoint_url)
    source, destination = f"s3://{moto_buckets.source}", f"s3://{moto_buckets.dest}"

    refused = job.run(source, destination)

    line = assert_usage_error(refused, "destination", forwarder.endpoint_url, "certificate", "could not be verified",
                              "AWS_CA_BUNDLE")
    assert forwarder.handshakes_refused > 0, "the tool never tried TLS with the endpoint"
    assert forwarder.connections_served == 0, line
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == {}
    assert incomplete_uploads(moto_buckets.client, moto_buckets.dest) == []
    assert not job.progress_file.exists()

    job.env["AWS_CA_BUNDLE"] = str(certificate)
    trusted = job.run(source, destination)

    assert trusted.returncode == 0, describe(trusted)
    assert forwarder.connections_served > 0, "the copy did not go through the TLS endpoint"
    assert object_snapshot(moto_buckets.client, moto_buckets.dest) == source_before
