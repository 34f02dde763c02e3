# apt_install PACKAGE...: installs Debian packages, directly as root, through sudo
# otherwise. Sourced by .ci/run and bench/run.sh.
apt_install() {
    local as_root=()
    if [ "$(id -u)" -ne 0 ]; then
        if ! command -v sudo >/dev/null; then
            echo "installing $* needs root or sudo" >&2
            exit 1
        fi
        as_root=(sudo)
    fi
    echo "installing $* with apt-get"
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
