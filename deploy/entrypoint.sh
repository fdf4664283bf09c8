#!/bin/sh
# The container's entry point: run s3_bulk_transfer.py with the arguments given.
#
# Where the source account's credentials cannot be mounted as a file (AWS Batch passes a Secrets
# Manager secret as an environment variable, not as a file), set S3BT_SOURCE_CREDENTIALS_JSON to the
# contents of a source_credentials.json: it is written, owner-only, to $S3BT_SOURCE_CREDENTIALS_FILE
# (default /tmp/source_credentials.json) and removed from the environment before the tool starts, so
# the secret is neither in the process's environment nor in a log. The command line must then name
# that file with --source-credentials, as deploy/batch/job-definition.json does.
set -eu

tool="${S3BT_TOOL:-/app/s3_bulk_transfer.py}"

if [ -n "${S3BT_SOURCE_CREDENTIALS_JSON:-}" ]; then
    file="${S3BT_SOURCE_CREDENTIALS_FILE:-/tmp/source_credentials.json}"
    (umask 077 && printf '%s\n' "$S3BT_SOURCE_CREDENTIALS_JSON" >"$file")
    unset S3BT_SOURCE_CREDENTIALS_JSON
fi

exec python3 "$tool" "$@"
