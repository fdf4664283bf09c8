#!/usr/bin/env bash
#
# setup_ec2.sh - prepare an EC2 instance to run s3_bulk_transfer.py
#
# Supported: Amazon Linux 2023 (dnf), Ubuntu and Debian (apt-get).
#
# What it does (safe to run again and again):
#   1. installs python3 and venv/pip support with the OS package manager
#   2. creates $INSTALL_DIR (default /opt/s3_transfer)
#   3. copies s3_bulk_transfer.py, requirements.txt and
#      source_credentials.json.example from the directory this script is in
#   4. creates the virtualenv $INSTALL_DIR/venv (reused if it already works),
#      upgrades pip in it and installs requirements.txt
#   5. creates $INSTALL_DIR/source_credentials.json (mode 600) from the
#      example ONLY if it does not exist yet - real keys are never overwritten
#   6. prints the next steps
#
# Usage:
#   sudo ./setup_ec2.sh        # or run it as root, or as a user with sudo
#   sudo INSTALL_DIR=/srv/s3_transfer ./setup_ec2.sh   # custom location
#
# Environment:
#   INSTALL_DIR    target directory (default: /opt/s3_transfer)
#   INSTALL_OWNER  user that will own $INSTALL_DIR and run the transfer
#                  (default: the user who invoked sudo, else the current user)
#   PYTHON         interpreter used to create the venv (default: /usr/bin/python3)

set -euo pipefail

readonly DEFAULT_INSTALL_DIR="/opt/s3_transfer"
readonly MIN_PYTHON_MAJOR=3
readonly MIN_PYTHON_MINOR=9
readonly REQUIRED_FILES=(
    "s3_bulk_transfer.py"
    "requirements.txt"
    "source_credentials.json.example"
)

INSTALL_DIR="${INSTALL_DIR:-$DEFAULT_INSTALL_DIR}"
PYTHON="${PYTHON:-/usr/bin/python3}"
OS_RELEASE_FILE="${OS_RELEASE_FILE:-/etc/os-release}"

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
readonly SCRIPT_DIR

info() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

# Run a command as root: directly when we already are root, via sudo otherwise.
as_root() {
    if [[ "$(id -u)" -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

check_privileges() {
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 ||
            die "this script must be run as root, or by a user that can use sudo (sudo is not installed)."
        info "Not running as root; using sudo for privileged steps."
        sudo -v || die "sudo failed; run this script as root or as a user with sudo rights."
    fi
}

check_inputs() {
    [[ "$INSTALL_DIR" == /* ]] || die "INSTALL_DIR must be an absolute path (got: '$INSTALL_DIR')."
    [[ "$INSTALL_DIR" != "/" ]] || die "INSTALL_DIR must not be '/'."

    local f missing=()
    for f in "${REQUIRED_FILES[@]}"; do
        [[ -f "$SCRIPT_DIR/$f" ]] || missing+=("$f")
    done
    if ((${#missing[@]} > 0)); then
        die "missing file(s) next to setup_ec2.sh in $SCRIPT_DIR: ${missing[*]}"
    fi
}

# Echo the package manager to use ("dnf" or "apt") for the running OS.
detect_package_manager() {
    [[ -r "$OS_RELEASE_FILE" ]] ||
        die "cannot read $OS_RELEASE_FILE; unable to detect the operating system. Supported: Amazon Linux 2023, Ubuntu, Debian."

    local ID="" ID_LIKE="" VERSION_ID="" PRETTY_NAME=""
    # shellcheck source=/dev/null
    . "$OS_RELEASE_FILE"
    local name="${PRETTY_NAME:-${ID:-unknown} ${VERSION_ID:-}}"

    case "${ID:-}" in
        amzn)
            if [[ "${VERSION_ID:-}" == 2023* ]]; then
                echo dnf
                return 0
            fi
            die "unsupported OS: $name. Amazon Linux 2 ships Python 3.7, which is too old; use Amazon Linux 2023 or Ubuntu."
            ;;
        ubuntu | debian)
            echo apt
            return 0
            ;;
        *) ;;
    esac
    case " ${ID_LIKE:-} " in
        *" ubuntu "* | *" debian "*)
            echo apt
            return 0
            ;;
        *) ;;
    esac
    die "unsupported OS: $name (ID=${ID:-?}). Supported: Amazon Linux 2023 (dnf), Ubuntu and Debian (apt-get). Install python3 (>= ${MIN_PYTHON_MAJOR}.${MIN_PYTHON_MINOR}) with venv support manually and follow the steps in this script."
}

install_os_packages() {
    local pm="$1"
    local pkgs
    case "$pm" in
        dnf)
            command -v dnf >/dev/null 2>&1 || die "dnf not found, but the OS looks like Amazon Linux 2023."
            pkgs=(python3 python3-pip)
            if rpm -q "${pkgs[@]}" >/dev/null 2>&1; then
                info "OS packages already installed: ${pkgs[*]}"
            else
                info "Installing OS packages with dnf: ${pkgs[*]}"
                as_root dnf install -y "${pkgs[@]}"
            fi
            ;;
        apt)
            command -v apt-get >/dev/null 2>&1 || die "apt-get not found, but the OS looks like Ubuntu/Debian."
            pkgs=(python3 python3-venv python3-pip)
            local p all_installed=1
            for p in "${pkgs[@]}"; do
                if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
                    all_installed=0
                fi
            done
            if ((all_installed)); then
                info "OS packages already installed: ${pkgs[*]}"
            else
                info "Installing OS packages with apt-get: ${pkgs[*]}"
                as_root env DEBIAN_FRONTEND=noninteractive apt-get update
                as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
            fi
            ;;
        *)
            die "internal error: unknown package manager '$pm'"
            ;;
    esac
}

check_python() {
    [[ -x "$PYTHON" ]] || die "$PYTHON not found after installing OS packages (set PYTHON=/path/to/python3 to override)."
    if ! "$PYTHON" -c "import sys; sys.exit(0 if sys.version_info >= (${MIN_PYTHON_MAJOR}, ${MIN_PYTHON_MINOR}) else 1)"; then
        die "$PYTHON is $("$PYTHON" -V 2>&1); Python >= ${MIN_PYTHON_MAJOR}.${MIN_PYTHON_MINOR} is required."
    fi
    "$PYTHON" -c "import venv, ensurepip" 2>/dev/null ||
        die "$PYTHON has no working venv/ensurepip support; install the OS package for python3 venv support."
    info "Using $("$PYTHON" -V 2>&1) at $PYTHON"
}

# Decide who should own the install dir: the transfer writes its log and
# progress file into it, so the user who runs it needs write access.
resolve_owner() {
    local owner="${INSTALL_OWNER:-}"
    if [[ -z "$owner" ]]; then
        if [[ "$(id -u)" -eq 0 && -n "${SUDO_USER:-}" ]]; then
            owner="$SUDO_USER"
        else
            owner="$(id -un)"
        fi
    fi
    id -u "$owner" >/dev/null 2>&1 || die "INSTALL_OWNER user '$owner' does not exist."
    printf '%s\n' "$owner"
}

copy_files() {
    if [[ -d "$INSTALL_DIR" ]]; then
        info "Using existing directory $INSTALL_DIR"
    else
        info "Creating $INSTALL_DIR"
        as_root mkdir -p "$INSTALL_DIR"
    fi

    local f src dst mode
    for f in "${REQUIRED_FILES[@]}"; do
        src="$SCRIPT_DIR/$f"
        dst="$INSTALL_DIR/$f"
        if [[ -e "$dst" && "$src" -ef "$dst" ]]; then
            info "$f is already in place (running from $INSTALL_DIR)"
            continue
        fi
        mode=644
        [[ "$f" == *.py ]] && mode=755
        info "Copying $f -> $dst"
        as_root install -m "$mode" "$src" "$dst"
    done
}

setup_venv() {
    local venv="$INSTALL_DIR/venv"
    local vpy="$venv/bin/python"

    if [[ -x "$vpy" ]] && "$vpy" -c "import sys" >/dev/null 2>&1 && "$vpy" -m pip --version >/dev/null 2>&1; then
        info "Reusing existing virtualenv $venv"
    else
        if [[ -e "$venv" ]]; then
            warn "$venv exists but is not a working virtualenv; recreating it."
            as_root "$PYTHON" -m venv --clear "$venv"
        else
            info "Creating virtualenv $venv"
            as_root "$PYTHON" -m venv "$venv"
        fi
    fi

    info "Upgrading pip in the virtualenv"
    as_root "$vpy" -m pip install --no-input --upgrade pip
    info "Installing $INSTALL_DIR/requirements.txt into the virtualenv"
    as_root "$vpy" -m pip install --no-input -r "$INSTALL_DIR/requirements.txt"
}

setup_credentials() {
    local creds="$INSTALL_DIR/source_credentials.json"
    if [[ -e "$creds" ]]; then
        info "Keeping existing $creds (not overwritten)"
    else
        info "Creating $creds from the example (mode 600)"
        as_root install -m 600 "$INSTALL_DIR/source_credentials.json.example" "$creds"
        CREDS_CREATED=1
    fi
    # Tighten permissions on whatever is there; never touch the contents.
    as_root chmod 600 "$creds"
}

fix_ownership() {
    local owner="$1"
    local group
    group="$(id -gn "$owner")"
    info "Setting owner of $INSTALL_DIR to $owner:$group"
    as_root chown -R "$owner:$group" "$INSTALL_DIR"
}

print_next_steps() {
    local owner="$1"
    # Prefix commands with sudo only if root owns the files and the person
    # reading this is not working in a root shell.
    local run_as=""
    if [[ "$owner" == "root" && ( -n "${SUDO_USER:-}" || "$(id -u)" -ne 0 ) ]]; then
        run_as="sudo "
    fi
    local creds_note="edit it and put in the SOURCE account's keys"
    ((CREDS_CREATED)) && creds_note="just created from the example - replace the EXAMPLE keys with the SOURCE account's keys"

    cat <<EOF

========================================================================
 s3-bulk-transfer is installed in $INSTALL_DIR (owned by $owner)
========================================================================

Next steps:

 1. Put the SOURCE account's credentials into
      $INSTALL_DIR/source_credentials.json
    ($creds_note; keep it mode 600).
      ${run_as}\${EDITOR:-nano} $INSTALL_DIR/source_credentials.json

 2. Do a dry run first (copies nothing):
      cd $INSTALL_DIR && ${run_as}./venv/bin/python s3_bulk_transfer.py s3://SOURCE-BUCKET s3://DEST-BUCKET --dry-run

 3. Run the real transfer inside tmux or screen so it survives SSH disconnects
    (install with 'sudo dnf install -y tmux' or 'sudo apt-get install -y tmux'):
      tmux new -s s3transfer
      cd $INSTALL_DIR && ${run_as}./venv/bin/python s3_bulk_transfer.py s3://SOURCE-BUCKET s3://DEST-BUCKET
    (detach with Ctrl-b d, re-attach with 'tmux attach -t s3transfer')

 4. Monitor progress from another shell:
      tail -f $INSTALL_DIR/s3_transfer.log
      cat $INSTALL_DIR/transfer_progress.json

EOF
}

CREDS_CREATED=0

main() {
    check_inputs
    check_privileges
    local pm owner
    pm="$(detect_package_manager)"
    info "Detected package manager: $pm"
    install_os_packages "$pm"
    check_python
    owner="$(resolve_owner)"
    copy_files
    setup_venv
    setup_credentials
    fix_ownership "$owner"
    print_next_steps "$owner"
}

main "$@"
