#!/usr/bin/env bash
# Provision a fresh Debian (12 or later) machine as a Bencher benchmark runner.
#
# What it does, in order (every step is safe to repeat; re-running upgrades and restarts the agent):
#   1. installs the Debian packages the agent needs: bubblewrap (the benchmark sandbox), pipx and
#      python3-venv (to install the agent in its own virtualenv), ca-certificates (TLS to Bencher);
#   2. installs runner-agent with pipx, system-wide: its virtualenv under /opt/pipx and the command
#      at /usr/local/bin/runner-agent (the path the systemd unit starts);
#   3. runs `runner-agent check`, the preflight that says whether this box can give quiet numbers
#      (exit 0 fit, 10 usable with warnings, 11 unfit: this script stops on 11);
#   4. runs `runner-agent install-service`, which writes /etc/systemd/system/runner-agent.service and
#      /etc/runner-agent/runner-agent.env (host, runner and key; mode 0600);
#   5. enables and (re)starts the service. A restart is a drain: a job that is running finishes
#      and delivers its result first, so this step can take as long as that job.
#
# Usage (as root):
#   provision.sh --runner ID --key-file PATH [--host URL] [--source SPEC] [--config PATH]
#                [--drain-timeout SECONDS] [--allow-unfit]
#
#   --runner ID           the runner's UUID or slug (bencher runner create ... prints both)
#   --key-file PATH       a file holding the runner key (bencher_runner_...); copy it to the box
#                         with mode 0600; after provisioning it may be deleted (the key now lives
#                         in /etc/runner-agent/runner-agent.env)
#   --host URL            the Bencher API (default: the --config file's host, else
#                         https://api.bencher.dev)
#   --source SPEC         what pipx installs: "runner-agent" from PyPI (default), or a path to a
#                         source checkout or wheel, or a URL (e.g. git+https://host/repo.git@v1.2.0)
#   --config PATH         a TOML config file for `runner-agent run` (it must exist)
#   --drain-timeout S     how long `systemctl stop` waits for a running job (default 3900 s)
#   --allow-unfit         go on even when `runner-agent check` says the box is unfit
#
# Example:
#   install -m 0600 /dev/stdin /root/runner.key <<<"bencher_runner_..."
#   ./provision.sh --runner my-runner --key-file /root/runner.key
set -euo pipefail

HOST=""  # empty: the --config file's host, else https://api.bencher.dev
RUNNER=""
KEY_FILE=""
SOURCE="runner-agent"
CONFIG=""
DRAIN_TIMEOUT=""
ALLOW_UNFIT=0

die() {
  echo "provision.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '2,/^set -euo pipefail$/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    --runner) RUNNER="${2:?--runner needs a value}"; shift 2 ;;
    --key-file) KEY_FILE="${2:?--key-file needs a value}"; shift 2 ;;
    --host) HOST="${2:?--host needs a value}"; shift 2 ;;
    --source) SOURCE="${2:?--source needs a value}"; shift 2 ;;
    --config) CONFIG="${2:?--config needs a value}"; shift 2 ;;
    --drain-timeout) DRAIN_TIMEOUT="${2:?--drain-timeout needs a value}"; shift 2 ;;
    --allow-unfit) ALLOW_UNFIT=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

[ -n "$RUNNER" ] || die "--runner ID is required (see --help)"
[ -n "$KEY_FILE" ] || die "--key-file PATH is required (see --help)"
[ -r "$KEY_FILE" ] || die "cannot read the key file $KEY_FILE"
[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and a systemd service)"

# A local path given to --source must be absolute for pipx, whatever directory we are run from.
if [ -e "$SOURCE" ]; then
  SOURCE="$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")"
fi

echo "==> 1/5 Debian packages"
export DEBIAN_FRONTEND=noninteractive
packages=(bubblewrap pipx python3-venv ca-certificates)
missing=()
for p in "${packages[@]}"; do
  # no pipe into grep -q: under pipefail an early grep exit can fail the pipeline (SIGPIPE)
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "    already installed: ${packages[*]}"
fi

echo "==> 2/5 runner-agent via pipx ($SOURCE)"
# System-wide pipx layout: every root shell and the systemd unit see the same install.
export PIPX_HOME=/opt/pipx
export PIPX_BIN_DIR=/usr/local/bin
export PIPX_MAN_DIR=/usr/local/share/man
# --force makes a re-run reinstall (from PyPI: the newest release; later upgrades:
# `PIPX_HOME=/opt/pipx PIPX_BIN_DIR=/usr/local/bin pipx upgrade runner-agent`).
pipx install --force "$SOURCE"
AGENT="$PIPX_BIN_DIR/runner-agent"
[ -x "$AGENT" ] || die "pipx did not install $AGENT"
"$AGENT" --version

echo "==> 3/5 preflight: runner-agent check"
check_status=0
check_args=(check)
# with the service's config file, check looks at the cache and state dirs the service will use
[ -z "$CONFIG" ] || check_args+=(--config "$CONFIG")
"$AGENT" "${check_args[@]}" || check_status=$?
case "$check_status" in
  0) echo "    fit for benchmarking" ;;
  10) echo "    usable, with warnings (see the fixes above)" ;;
  11)
    if [ "$ALLOW_UNFIT" -eq 1 ]; then
      echo "    UNFIT, going on because of --allow-unfit" >&2
    else
      die "this machine is unfit to run benchmarks (see above); fix it or pass --allow-unfit"
    fi
    ;;
  *) die "runner-agent check failed with exit status $check_status" ;;
esac

echo "==> 4/5 systemd unit and environment file"
install_args=(install-service --force --executable "$AGENT"
  --runner "$RUNNER" --key-file "$KEY_FILE")
[ -z "$HOST" ] || install_args+=(--host "$HOST")
[ -z "$CONFIG" ] || install_args+=(--config "$CONFIG")
[ -z "$DRAIN_TIMEOUT" ] || install_args+=(--drain-timeout "$DRAIN_TIMEOUT")
"$AGENT" "${install_args[@]}"

echo "==> 5/5 start the service"
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable runner-agent
  # restart = drain + start: picks up a new version or key; waits for a running job to finish.
  systemctl restart runner-agent
  systemctl --no-pager --lines=5 status runner-agent || true
  echo "    done. Follow the logs with: journalctl -u runner-agent -f"
else
  echo "    systemd is not running here (container or chroot?); the files are in place." >&2
  echo "    On the real machine: systemctl daemon-reload && systemctl enable --now runner-agent" >&2
fi
