#!/usr/bin/python3
# Capture filter for OpenSMTPD (smtpd-filters(7)), Python 3 standard library only.
#
# Usage (smtpd.conf):
#   filter "capture" proc-exec "/usr/bin/python3 /path/to/capture-filter.py /path/to/out.txt"
#
# - registers every smtp-in report event and every filter phase smtpd queries;
# - answers `proceed` to every filter request and echoes every data line unchanged;
# - appends every line it receives from smtpd, byte for byte (with its "\n"), to OUT.
#
# Everything is bytes: mail is not UTF-8. Output to smtpd and to OUT is flushed after
# each batch of input. It exits only on EOF from smtpd (an exiting filter takes smtpd down).
import os
import sys

REPORT_EVENTS = (
    b"link-connect", b"link-disconnect", b"link-greeting", b"link-identify", b"link-tls",
    b"link-auth", b"tx-reset", b"tx-begin", b"tx-mail", b"tx-rcpt", b"tx-envelope",
    b"tx-data", b"tx-commit", b"tx-rollback", b"protocol-client", b"protocol-server",
    b"filter-report", b"filter-response", b"timeout",
)
FILTER_PHASES = (
    b"connect", b"helo", b"ehlo", b"starttls", b"auth", b"mail-from", b"rcpt-to", b"data",
    b"data-line", b"rset", b"quit", b"noop", b"commit",
)


def version_tuple(v):
    try:
        return tuple(int(x) for x in v.split(b"."))
    except ValueError:
        return (0, 0)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def answer(line):
    """The answer smtpd expects for one input line, or None."""
    if line == b"config|ready":
        out = [b"register|report|smtp-in|" + e for e in REPORT_EVENTS]
        out += [b"register|filter|smtp-in|" + p for p in FILTER_PHASES]
        out.append(b"register|ready")
        return b"".join(x + b"\n" for x in out)
    if not line.startswith(b"filter|"):
        return None
    # filter|VERSION|TIME|smtp-in|PHASE|A|B[|params]; the last field may hold "|"
    f = line.split(b"|", 7)
    if len(f) < 7:
        return None
    version, phase, a, b = f[1], f[4], f[5], f[6]
    # protocol < 0.5 answers TOKEN|SESSION, later ones SESSION|TOKEN (requests are always
    # SESSION|TOKEN).
    ids = (b + b"|" + a) if version_tuple(version) < (0, 5) else (a + b"|" + b)
    if phase == b"data-line":
        data = f[7] if len(f) > 7 else b""
        return b"filter-dataline|" + ids + b"|" + data + b"\n"
    return b"filter-result|" + ids + b"|proceed\n"


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: capture-filter.py OUT\n")
    out = open(sys.argv[1], "ab", buffering=0) if len(sys.argv) > 1 else None
    pending = b""
    while True:
        try:
            chunk = os.read(0, 1 << 20)
        except InterruptedError:
            continue
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if not lines:
            continue
        if out is not None:
            try:
                out.write(b"".join(x + b"\n" for x in lines))
            except OSError as e:
                sys.stderr.write("capture-filter: cannot write capture: %s\n" % e)
        replies = b"".join(r for r in map(answer, lines) if r)
        if replies:
            write_all(1, replies)
    if out is not None and pending:
        out.write(pending)


if __name__ == "__main__":
    main()
