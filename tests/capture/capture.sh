#!/bin/sh
# Regenerate the golden transcripts in opensmtpd-filter/tests/data/transcripts/ from live
# OpenSMTPD 6.8 and 7.4 daemons (as root). Without RIG_CAPTURE_WRITE=1, the same test only
# checks the live daemons against the stored transcripts (it runs with `cargo test`).
set -eu
cd "$(dirname "$0")/../.."
scripts/lib/provision.sh
RIG_CAPTURE_WRITE=1 cargo test -q -p opensmtpd-e2e --test capture -- --nocapture
git status --short opensmtpd-filter/tests/data/transcripts
