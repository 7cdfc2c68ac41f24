# Builds and installs the three OpenSMTPD filters, their manuals and example files.
#
#   make                    cargo build --release of filter-greylist, -rspamd, -senderscore
#   make install            as root; DESTDIR=/tmp/stage for a staged install
#   make uninstall
#
# Portable: GNU make and OpenBSD make (POSIX make plus "!=", which both have).
#
# The layout follows OS (default: `uname -s`): OpenBSD, or Linux meaning Debian's
# layout. Every directory can be given on the command line:
#
#   variable       OpenBSD                              Linux (Debian)
#   PREFIX         /usr/local                           /usr
#   LIBEXECDIR     PREFIX/libexec/smtpd                 PREFIX/libexec/opensmtpd
#   MANDIR         PREFIX/man/man8                      PREFIX/share/man/man8
#   EXAMPLESDIR    PREFIX/share/examples/opensmtpd-filter-rs
#                                                       PREFIX/share/doc/opensmtpd-filter-rs/examples
#   STOREDIR       /var/db/filter-greylist              /var/db/filter-greylist
#   FILTER_USER    _smtpd                               opensmtpd
#
# smtpd resolves a bare `proc-exec "filter-x"` in its libexec directory, so LIBEXECDIR
# must be smtpd's own for bare names to work. STOREDIR is filter-greylist's built-in
# default (--store); it is created owned by FILTER_USER, except with DESTDIR (a staged
# install has no users: the package sets the owner) or when the user does not exist.
# The binaries are taken from CARGO_TARGET_DIR/release (default: target, or cargo's
# CARGO_TARGET_DIR from the environment).

OS != uname -s

PREFIX_OpenBSD =	/usr/local
PREFIX_Linux =		/usr
PREFIX =		${PREFIX_${OS}}

LIBEXECDIR_OpenBSD =	${PREFIX}/libexec/smtpd
LIBEXECDIR_Linux =	${PREFIX}/libexec/opensmtpd
LIBEXECDIR =		${LIBEXECDIR_${OS}}

MANDIR_OpenBSD =	${PREFIX}/man/man8
MANDIR_Linux =		${PREFIX}/share/man/man8
MANDIR =		${MANDIR_${OS}}

EXAMPLESDIR_OpenBSD =	${PREFIX}/share/examples/opensmtpd-filter-rs
EXAMPLESDIR_Linux =	${PREFIX}/share/doc/opensmtpd-filter-rs/examples
EXAMPLESDIR =		${EXAMPLESDIR_${OS}}

FILTER_USER_OpenBSD =	_smtpd
FILTER_USER_Linux =	opensmtpd
FILTER_USER =		${FILTER_USER_${OS}}

STOREDIR =		/var/db/filter-greylist

CARGO =			cargo
CARGO_TARGET_DIR ?=	target
INSTALL =		install

FILTERS =		filter-greylist filter-rspamd filter-senderscore
EXAMPLES =		smtpd.conf greylist-wl-ip greylist-wl-domain greylist-wl-rcpt greylist-traps

all: build

build:
	${CARGO} build --release --locked --target-dir ${CARGO_TARGET_DIR} \
	    -p filter-greylist -p filter-rspamd -p filter-senderscore

check-layout:
	@if [ -z "${PREFIX}" ] || [ -z "${LIBEXECDIR}" ] || [ -z "${MANDIR}" ] || \
	    [ -z "${EXAMPLESDIR}" ] || [ -z "${FILTER_USER}" ]; then \
		echo "make: no layout for OS=${OS}: give OS=OpenBSD or OS=Linux, or PREFIX," \
		    "LIBEXECDIR, MANDIR, EXAMPLESDIR and FILTER_USER" >&2; \
		exit 1; \
	fi
	@for f in ${FILTERS}; do \
		if [ ! -x ${CARGO_TARGET_DIR}/release/$$f ]; then \
			echo "make: ${CARGO_TARGET_DIR}/release/$$f is missing: run make first" >&2; \
			exit 1; \
		fi; \
	done

install: check-layout
	${INSTALL} -d -m 0755 ${DESTDIR}${LIBEXECDIR} ${DESTDIR}${MANDIR} ${DESTDIR}${EXAMPLESDIR}
	for f in ${FILTERS}; do \
		${INSTALL} -m 0755 ${CARGO_TARGET_DIR}/release/$$f ${DESTDIR}${LIBEXECDIR}/$$f || exit 1; \
		${INSTALL} -m 0644 $$f/$$f.8 ${DESTDIR}${MANDIR}/$$f.8 || exit 1; \
	done
	for f in ${EXAMPLES}; do \
		${INSTALL} -m 0644 packaging/examples/$$f ${DESTDIR}${EXAMPLESDIR}/$$f || exit 1; \
	done
	@if [ -n "${DESTDIR}" ]; then \
		echo "${INSTALL} -d -m 0750 ${DESTDIR}${STOREDIR}" \
		    "(owner left to the package: DESTDIR is set)"; \
		${INSTALL} -d -m 0750 ${DESTDIR}${STOREDIR}; \
	elif id ${FILTER_USER} >/dev/null 2>&1; then \
		echo "${INSTALL} -d -m 0750 -o ${FILTER_USER} -g ${FILTER_USER} ${STOREDIR}"; \
		${INSTALL} -d -m 0750 -o ${FILTER_USER} -g ${FILTER_USER} ${STOREDIR}; \
	else \
		echo "${INSTALL} -d -m 0750 ${STOREDIR} (user ${FILTER_USER} does not exist:" \
		    "chown it to smtpd's filter user yourself)"; \
		${INSTALL} -d -m 0750 ${STOREDIR}; \
	fi

uninstall: check-layout-dirs
	for f in ${FILTERS}; do \
		rm -f ${DESTDIR}${LIBEXECDIR}/$$f ${DESTDIR}${MANDIR}/$$f.8; \
	done
	for f in ${EXAMPLES}; do rm -f ${DESTDIR}${EXAMPLESDIR}/$$f; done
	-rmdir ${DESTDIR}${EXAMPLESDIR} 2>/dev/null
	@if rmdir ${DESTDIR}${STOREDIR} 2>/dev/null; then \
		echo "removed ${DESTDIR}${STOREDIR} (empty)"; \
	elif [ -d ${DESTDIR}${STOREDIR} ]; then \
		echo "kept ${DESTDIR}${STOREDIR}: it holds greylisting state (remove it yourself)"; \
	fi

check-layout-dirs:
	@if [ -z "${LIBEXECDIR}" ] || [ -z "${MANDIR}" ] || [ -z "${EXAMPLESDIR}" ]; then \
		echo "make: no layout for OS=${OS}: give OS=OpenBSD or OS=Linux" >&2; \
		exit 1; \
	fi

clean:
	${CARGO} clean --release --target-dir ${CARGO_TARGET_DIR} \
	    -p filter-greylist -p filter-rspamd -p filter-senderscore

.PHONY: all build check-layout check-layout-dirs install uninstall clean
