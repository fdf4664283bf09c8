"""The binary units the tests size their objects in, as the tool's options (5MiB) are written."""

KIB = 1024
MIB = 1024 * KIB
