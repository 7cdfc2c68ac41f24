#!/bin/sh
# Provision this machine (Debian 12, run as root) for the end-to-end test rig.
#
# Idempotent and quiet on success; safe to re-run. A second run does no network access
# once everything is in place.
#
#  - /usr/sbin/policy-rc.d (exit 101) so that installing daemons starts none of them;
#  - the Debian packages the rig drives: opensmtpd (6.8, the system one), swaks,
#    libnet-ssleay-perl and libio-socket-inet6-perl (swaks' TLS and IPv6), dnsmasq-base, openssl, python3, util-linux (unshare); and the
#    peer filters the e2e tests compare against (tests/e2e/peers.rs):
#    opensmtpd-filter-rspamd and opensmtpd-filter-senderscore (Go), libopensmtpd-dev
#    with gcc (C); the packaging checks' tools: lintian, bmake (a BSD make);
#  - the Go filters' .debs, downloaded (apt-get download) into $RIG_CACHE_DIR/go-debs:
#    the package test (scripts/test-packages) puts them back from there after
#    upgrading them to ours, without the network;
#  - cargo-deb (cargo install --locked), which builds our .debs;
#  - OpenSMTPD 7.4 from <codename>-backports, downloaded with a private apt setup and
#    unpacked (never installed) into $RIG_SMTPD74_ROOT
#    (default /var/cache/opensmtpd-filter-rig/opensmtpd-7.4);
#  - the throwaway local user that receives test mail in a maildir ($RIG_MAIL_USER, rigmail);
#  - /var/spool/smtpd, the mount point the rig bind-mounts each private spool onto.
#
# Environment:
#   RIG_CACHE_DIR     default /var/cache/opensmtpd-filter-rig
#   RIG_SMTPD74_ROOT  default $RIG_CACHE_DIR/opensmtpd-7.4
#   RIG_SMTPD74_VERSION  default 7.4.0p1-1~bpo12+1
#   RIG_MAIL_USER     default rigmail
#   RIG_VERBOSE=1     show what is done
set -eu

RIG_CACHE_DIR=${RIG_CACHE_DIR:-/var/cache/opensmtpd-filter-rig}
RIG_SMTPD74_ROOT=${RIG_SMTPD74_ROOT:-$RIG_CACHE_DIR/opensmtpd-7.4}
RIG_SMTPD74_VERSION=${RIG_SMTPD74_VERSION:-7.4.0p1-1~bpo12+1}
RIG_MAIL_USER=${RIG_MAIL_USER:-rigmail}
PACKAGES="opensmtpd swaks libnet-ssleay-perl libio-socket-inet6-perl dnsmasq-base openssl python3 util-linux ca-certificates opensmtpd-filter-rspamd opensmtpd-filter-senderscore libopensmtpd-dev gcc rspamd redis-server lintian bmake"
GO_FILTERS="opensmtpd-filter-rspamd opensmtpd-filter-senderscore"

export DEBIAN_FRONTEND=noninteractive
export LC_ALL=C

say() { if [ "${RIG_VERBOSE:-0}" = 1 ]; then echo "provision: $*" >&2; fi; }
die() { echo "provision: error: $*" >&2; exit 1; }
# Run a command quietly; on failure show its output and die.
quiet() {
    _log=$(mktemp)
    if "$@" >"$_log" 2>&1; then
        if [ "${RIG_VERBOSE:-0}" = 1 ]; then cat "$_log" >&2; fi
        rm -f "$_log"
    else
        _rc=$?
        cat "$_log" >&2
        rm -f "$_log"
        die "command failed (exit $_rc): $*"
    fi
}

[ "$(id -u)" = 0 ] || die "must run as root"
[ -r /etc/debian_version ] || die "this rig supports Debian only"

# --- 1. policy-rc.d ---------------------------------------------------------------------
if [ ! -e /usr/sbin/policy-rc.d ]; then
    say "creating /usr/sbin/policy-rc.d"
    printf '#!/bin/sh\n# created by opensmtpd-filter scripts/lib/provision.sh: start no daemon on install\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
fi

# --- 2. system packages -----------------------------------------------------------------
missing=""
for p in $PACKAGES; do
    st=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
    [ "$st" = installed ] || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing:$missing"
    have_lists=0
    if ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then have_lists=1; fi
    # shellcheck disable=SC2086
    if [ "$have_lists" = 0 ] || ! apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
        quiet apt-get update -qq
        # shellcheck disable=SC2086
        quiet apt-get install -y -qq --no-install-recommends $missing
    fi
fi
for b in /usr/sbin/smtpd /usr/bin/swaks /usr/sbin/dnsmasq /usr/bin/openssl /usr/bin/python3 /usr/bin/unshare; do
    [ -x "$b" ] || die "$b is missing after installing packages"
done
# swaks only recommends these; without IO::Socket::INET6 it cannot reach the rig's ::1
# listener, without Net::SSLeay it cannot do STARTTLS
for m in IO::Socket::INET6 Net::SSLeay; do
    perl -M"$m" -e 1 2>/dev/null || die "perl module $m is missing after installing packages (swaks needs it)"
done
getent passwd opensmtpd >/dev/null || die "user opensmtpd missing (it comes with the opensmtpd package)"

# --- 3. OpenSMTPD 7.4 from backports, unpacked next to the system 6.8 -------------------
# The mirror URI is derived from the machine's own apt configuration: the first URI of a
# deb822 stanza (or sources.list line) serving the release itself (not -security/-updates).
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || die "cannot read VERSION_CODENAME from /etc/os-release"

mirror_uri() {
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # deb822: paragraphs separated by blank lines
        awk -v cn="$codename" '
            function flush() {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && uris != "" && enabled !~ /^[Nn]o/) {
                    n = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) if (s[i] == cn) { split(uris, u, /[ \t]+/); print u[1]; exit }
                }
                types = ""; uris = ""; suites = ""; enabled = ""
            }
            /^[ \t]*#/ { next }
            /^[ \t]*$/ { flush(); next }
            tolower($1) == "types:"   { sub(/^[^:]*:[ \t]*/, ""); types = $0; next }
            tolower($1) == "uris:"    { sub(/^[^:]*:[ \t]*/, ""); uris = $0; next }
            tolower($1) == "suites:"  { sub(/^[^:]*:[ \t]*/, ""); suites = $0; next }
            tolower($1) == "enabled:" { sub(/^[^:]*:[ \t]*/, ""); enabled = $0; next }
            END { flush() }
        ' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        # one-line style: deb [opts] URI SUITE COMPONENTS...
        awk -v cn="$codename" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == cn) { print $i; exit }
            }' "$f"
    done
}

smtpd74_ok() {
    [ -x "$RIG_SMTPD74_ROOT/usr/sbin/smtpd" ] &&
        [ -x "$RIG_SMTPD74_ROOT/usr/libexec/opensmtpd/encrypt" ] &&
        [ -x "$RIG_SMTPD74_ROOT/usr/libexec/opensmtpd/mail.maildir" ] &&
        [ -r "$RIG_SMTPD74_ROOT/.rig-version" ]
}

if ! smtpd74_ok; then
    uri=$(mirror_uri | head -n 1)
    [ -n "$uri" ] || die "cannot derive the Debian mirror URI from /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    [ -r "$keyring" ] || die "$keyring is missing (package debian-archive-keyring)"
    say "fetching OpenSMTPD $RIG_SMTPD74_VERSION from $uri $codename-backports"

    apt_dir=$RIG_CACHE_DIR/apt
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/debs"
    echo "deb [signed-by=$keyring] $uri $codename-backports main" >"$apt_dir/sources.list"
    set -- -o Dir::Etc::sourcelist="$apt_dir/sources.list" -o Dir::Etc::sourceparts=/dev/null \
        -o Dir::State::lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" \
        -o Dir::Etc::preferences=/dev/null -o Dir::Etc::preferencesparts=/dev/null \
        -o APT::Sandbox::User=root
    quiet apt-get -qq "$@" update

    version=$RIG_SMTPD74_VERSION
    available=$(apt-cache "$@" madison opensmtpd 2>/dev/null | awk -F'|' '$3 ~ /backports/ { gsub(/ /, "", $2); print $2 }')
    if ! printf '%s\n' "$available" | grep -qxF -- "$version"; then
        alt=$(printf '%s\n' "$available" | head -n 1)
        [ -n "$alt" ] || die "opensmtpd $version is not in $codename-backports and no other backports version exists"
        echo "provision: warning: opensmtpd $version is gone from $codename-backports; using $alt instead" >&2
        version=$alt
    fi

    rm -f "$apt_dir/debs"/opensmtpd_*.deb
    (cd "$apt_dir/debs" && quiet apt-get -qq "$@" download "opensmtpd=$version")
    deb=$(ls "$apt_dir/debs"/opensmtpd_*.deb 2>/dev/null | head -n 1)
    [ -n "$deb" ] || die "apt-get download produced no opensmtpd .deb"

    tmp_root="$RIG_SMTPD74_ROOT.tmp.$$"
    rm -rf "$tmp_root"
    mkdir -p "$tmp_root"
    quiet dpkg-deb -x "$deb" "$tmp_root"
    [ -x "$tmp_root/usr/sbin/smtpd" ] || die "unpacked package has no usr/sbin/smtpd"
    echo "$version" >"$tmp_root/.rig-version"
    chmod 755 "$tmp_root"
    rm -rf "$RIG_SMTPD74_ROOT"
    mv "$tmp_root" "$RIG_SMTPD74_ROOT"
fi
# The filters and the mail delivery agents run as other users: they need to traverse the tree.
chmod 755 "$RIG_CACHE_DIR" "$RIG_SMTPD74_ROOT"
# It must run with the system's shared libraries.
if ldd "$RIG_SMTPD74_ROOT/usr/sbin/smtpd" 2>/dev/null | grep -q 'not found'; then
    die "OpenSMTPD 7.4 in $RIG_SMTPD74_ROOT misses shared libraries: $(ldd "$RIG_SMTPD74_ROOT/usr/sbin/smtpd" | grep 'not found' | tr '\n' ' ')"
fi

# --- 3b. the Go filters' .debs, for the package test to put them back ------------------
# The versions installed now are the ones to restore; a .deb per package, named as apt
# names it. apt-get download fetches from the machine's own apt sources.
go_debs=$RIG_CACHE_DIR/go-debs
mkdir -p "$go_debs"
# A package test killed while ours were installed (no trap runs on SIGKILL) leaves its
# marker: opensmtpd-filter-greylist is then the test's, to purge; without the marker it
# is an operator's, and the package test refuses to touch it.
package_test_marker=$RIG_CACHE_DIR/package-test-installed
if [ -e "$package_test_marker" ]; then
    if dpkg-query -W -f='${db:Status-Status}' opensmtpd-filter-greylist 2>/dev/null | grep -qv not-installed; then
        echo "provision: opensmtpd-filter-greylist was left installed by an interrupted package test: purging it" >&2
        quiet dpkg --purge opensmtpd-filter-greylist
    fi
fi
for p in $GO_FILTERS; do
    v=$(dpkg-query -W -f='${Version}' "$p")
    case $v in
    *:*)
        # ours (epoch 1) left behind by an interrupted package test: put the Go one back
        cached=$(ls "$go_debs/${p}_"*.deb 2>/dev/null | head -n 1)
        [ -n "$cached" ] || die "$p $v is installed, not Debian's Go package, and no cached .deb of the Go one is in $go_debs"
        echo "provision: $p $v (ours) is installed: reinstalling the Go package from $cached" >&2
        quiet dpkg -i "$cached"
        v=$(dpkg-query -W -f='${Version}' "$p")
        ;;
    esac
    if ! ls "$go_debs/${p}_"*.deb >/dev/null 2>&1 ||
        [ "$(dpkg-deb -f "$(ls "$go_debs/${p}_"*.deb | head -n 1)" Version)" != "$v" ]; then
        say "downloading $p $v into $go_debs"
        rm -f "$go_debs/${p}_"*.deb
        (cd "$go_debs" && quiet apt-get -o APT::Sandbox::User=root download "$p=$v")
    fi
done
rm -f "$package_test_marker"

# --- 3c. cargo-deb ---------------------------------------------------------------------
if ! command -v cargo-deb >/dev/null 2>&1; then
    say "installing cargo-deb"
    quiet cargo install --locked --quiet cargo-deb
fi

# --- 4. the throwaway mail user -------------------------------------------------------------
if ! getent passwd "$RIG_MAIL_USER" >/dev/null; then
    say "creating user $RIG_MAIL_USER"
    quiet useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "opensmtpd-filter test rig mailbox" "$RIG_MAIL_USER"
fi

# --- 5. mount point for the private spools --------------------------------------------------
[ -d /var/spool/smtpd ] || { mkdir -p /var/spool/smtpd && chmod 711 /var/spool/smtpd; }

say "ready: smtpd 6.8 /usr/sbin/smtpd, smtpd 7.4 $RIG_SMTPD74_ROOT ($(cat "$RIG_SMTPD74_ROOT/.rig-version"))"
exit 0
