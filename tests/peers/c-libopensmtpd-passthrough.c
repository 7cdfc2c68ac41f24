/* Copied from the throughput bench (/work/shared/bench/peers/c-libopensmtpd/passthrough.c)
 * so that tests/e2e/peers.rs does not depend on files outside the repository. */
/* Pass-through filter on libopensmtpd (osmtpd_run(3)): registers every
 * smtp-in report event and filter phase the library offers, answers
 * proceed to every filter request and echoes every data line unchanged. */
#include <sys/socket.h>
#include <stdint.h>
#include <stddef.h>
#include <time.h>
#include <opensmtpd.h>

static void f_connect(struct osmtpd_ctx *c, const char *h, struct sockaddr_storage *ss) { osmtpd_filter_proceed(c); }
static void f_str(struct osmtpd_ctx *c, const char *s) { osmtpd_filter_proceed(c); }
static void f_none(struct osmtpd_ctx *c) { osmtpd_filter_proceed(c); }
static void f_dataline(struct osmtpd_ctx *c, const char *line) { osmtpd_filter_dataline(c, "%s", line); }

static void r_connect(struct osmtpd_ctx *c, const char *rdns, enum osmtpd_status s, struct sockaddr_storage *a, struct sockaddr_storage *b) {}
static void r_none(struct osmtpd_ctx *c) {}
static void r_str(struct osmtpd_ctx *c, const char *s) {}
static void r_msgid(struct osmtpd_ctx *c, uint32_t m) {}
static void r_mail(struct osmtpd_ctx *c, uint32_t m, const char *a, enum osmtpd_status s) {}
static void r_envelope(struct osmtpd_ctx *c, uint32_t m, uint64_t e) {}
static void r_data(struct osmtpd_ctx *c, uint32_t m, enum osmtpd_status s) {}
static void r_commit(struct osmtpd_ctx *c, uint32_t m, size_t sz) {}

int
main(void)
{
	osmtpd_register_filter_connect(f_connect);
	osmtpd_register_filter_helo(f_str);
	osmtpd_register_filter_ehlo(f_str);
	osmtpd_register_filter_starttls(f_none);
	osmtpd_register_filter_auth(f_str);
	osmtpd_register_filter_mailfrom(f_str);
	osmtpd_register_filter_rcptto(f_str);
	osmtpd_register_filter_data(f_none);
	osmtpd_register_filter_dataline(f_dataline);
	osmtpd_register_filter_rset(f_none);
	osmtpd_register_filter_quit(f_none);
	osmtpd_register_filter_noop(f_none);
	osmtpd_register_filter_help(f_none);
	osmtpd_register_filter_wiz(f_none);
	osmtpd_register_filter_commit(f_none);

	osmtpd_register_report_connect(1, r_connect);
	osmtpd_register_report_disconnect(1, r_none);
	/* osmtpd_register_report_greeting() is declared in the Debian 0.7 header
	 * but not exported by libopensmtpd.so.0; osmtpd_need(OSMTPD_NEED_GREETING)
	 * is the exported way to get link-greeting registered. */
	osmtpd_need(OSMTPD_NEED_GREETING);
	osmtpd_register_report_identify(1, r_str);
	osmtpd_register_report_tls(1, r_str);
	osmtpd_register_report_begin(1, r_msgid);
	osmtpd_register_report_mail(1, r_mail);
	osmtpd_register_report_rcpt(1, r_mail);
	osmtpd_register_report_envelope(1, r_envelope);
	osmtpd_register_report_data(1, r_data);
	osmtpd_register_report_commit(1, r_commit);
	osmtpd_register_report_rollback(1, r_msgid);
	osmtpd_register_report_client(1, r_str);
	osmtpd_register_report_server(1, r_str);
	osmtpd_register_report_response(1, r_str);
	osmtpd_register_report_timeout(1, r_none);

	osmtpd_run();
	return 0;
}
