# Sourced by the scripts/ensure-* scripts: install Debian packages with apt-get, or fail
# loudly saying what to install by hand. Never skips: what the suite needs, it gets or fails.

# apt_install WHAT PACKAGE...: WHAT names the tool in messages ("nginx", "headless Chromium").
apt_install() {
  local what=$1
  shift
  echo "$what is not installed; installing Debian's $*" >&2
  if ! command -v apt-get >/dev/null; then
    echo "error: no apt-get here. Install $what ($*) with your package manager." >&2
    exit 1
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: installing $what needs root (or sudo)." >&2; exit 1; }
    sudo=sudo
  fi
  $sudo apt-get update -qq
  # A package's own service (nginx) is not wanted: in containers policy-rc.d keeps it off.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
