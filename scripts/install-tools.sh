#!/usr/bin/env bash
# Install the Debian tools the tests use, when missing:
#   dcmtk (storescu, echoscu, storescp), dicom3tools (dciodvfy), orthanc (a real PACS),
#   prometheus (promtool checks and unit-tests deploy/prometheus/).
# With --venv PYTHON: only what `PYTHON -m venv` needs (Debian's python3.X-venv).
set -euo pipefail

need=()
if [ "${1:-}" = "--venv" ]; then
  # Only what `python -m venv` needs: Debian's python3.X-venv (ensurepip), for ${2:-python3}.
  version=$("${2:-python3}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  need+=("python${version}-venv")
else
  command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
  command -v dciodvfy >/dev/null 2>&1 || need+=(dicom3tools)
  [ -x /usr/sbin/Orthanc ] || command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
  command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
fi
[ ${#need[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "error: ${need[*]} missing and not root (no sudo): install them with apt-get" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian's orthanc package starts a system service on port 4242/8042; the tests run
# their own Orthanc on ephemeral ports, so stop the packaged one where systemd runs it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet orthanc 2>/dev/null; then
  "${sudo[@]}" systemctl stop orthanc || true
fi
# Debian's prometheus package starts a server on port 9090; only promtool is needed here.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  "${sudo[@]}" systemctl stop prometheus || true
fi
