#!/bin/sh
# Shell helpers for the end-to-end rig (POSIX sh; source it: `. scripts/lib/rig.sh`).
#
#   rig_require_root        fail unless running as root
#   rig_provision           run scripts/lib/provision.sh (idempotent, quiet)
#   rig_smtpd74_root        print where the unpacked OpenSMTPD 7.4 lives
#   rig_check               fail with a hint unless both daemons and the tools are present
#   rig_stale_dirs          list /tmp/opensmtpd-rig-* and /dev/shm/opensmtpd-rig-*
#                           directories whose test process is gone
#
# The rigs themselves are started by the Rust harness (tests/src/lib.rs); it also stops what
# rigs of killed test processes left behind (by the PIDs they recorded, never by name).

# Where provision.sh lives: $RIG_LIB_DIR if set, else found from the sourcing script's
# directory ($0 is scripts/test or scripts/lib/x), else ./scripts/lib.
if [ -z "${RIG_LIB_DIR:-}" ]; then
    _d=$(CDPATH= cd -- "$(dirname -- "$0")" 2>/dev/null && pwd)
    for RIG_LIB_DIR in "$_d" "$_d/lib" "$_d/scripts/lib" "$(pwd)/scripts/lib"; do
        [ -x "$RIG_LIB_DIR/provision.sh" ] && break
    done
fi

rig_require_root() {
    if [ "$(id -u)" != 0 ]; then
        echo "rig: the e2e rig needs root (it mounts private namespaces and runs smtpd)" >&2
        return 1
    fi
}

rig_provision() {
    rig_require_root || return 1
    "$RIG_LIB_DIR/provision.sh"
}

rig_smtpd74_root() {
    echo "${RIG_SMTPD74_ROOT:-${RIG_CACHE_DIR:-/var/cache/opensmtpd-filter-rig}/opensmtpd-7.4}"
}

rig_check() {
    _root=$(rig_smtpd74_root)
    for _f in /usr/sbin/smtpd "$_root/usr/sbin/smtpd" "$_root/usr/libexec/opensmtpd/encrypt" \
        /usr/bin/swaks /usr/sbin/dnsmasq /usr/bin/openssl /usr/bin/unshare /usr/bin/python3; do
        if [ ! -x "$_f" ]; then
            echo "rig: $_f is missing: run scripts/test (or scripts/lib/provision.sh as root)" >&2
            return 1
        fi
    done
    if ! getent passwd "${RIG_MAIL_USER:-rigmail}" >/dev/null; then
        echo "rig: user ${RIG_MAIL_USER:-rigmail} is missing: run scripts/lib/provision.sh" >&2
        return 1
    fi
}

rig_stale_dirs() {
    for _d in /tmp/opensmtpd-rig-[0-9]* /dev/shm/opensmtpd-rig-[0-9]*; do
        [ -d "$_d" ] || continue
        _owner=${_d##*/opensmtpd-rig-}
        _owner=${_owner%%-*}
        [ -d "/proc/$_owner" ] || echo "$_d"
    done
}
