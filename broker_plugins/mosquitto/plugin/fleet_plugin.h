/*
 * fleet_plugin.h - what the plugin's units share: the plugin state and the
 * functions one unit calls in another. Internal, not an API: every unit
 * includes it first (it sets the feature macros for the system headers).
 *
 *   fleet_plugin.c  entry points: options, callback registration, reload, tick
 *   admission.c     BASIC_AUTH: who may connect, in the kernel's order
 *   certificate.c   the checks on a client certificate (issuer, validity, EKU, key)
 *   identifiers.c   device ids and certificate serials as text
 *   acl.c           ACL_CHECK: the device's topic tree, the sidecar's topics
 *   control.c       $CONTROL/fleet/v1: commands from the sidecar and peer nodes
 *   revocation.c    revoked serials and devices: snapshot, staleness, kicks
 *   sessions.c      one session per device across broker nodes
 *   trust.c         the issuing CAs and roots (plugin_opt_issuing_ca, root_ca)
 *   event_log.c     refusals and kicks as text or JSON log lines
 *   table.c         the string-keyed hash table the state is kept in
 *
 * fleet_kernel.h (one directory up, generated from fleet/kernel/) holds every
 * trust constant; build.py puts its directory on the include path.
 */
#ifndef FLEET_PLUGIN_H
#define FLEET_PLUGIN_H

#define _DEFAULT_SOURCE /* timegm */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <openssl/opensslv.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "fleet_kernel.h"

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "the fleet plugin needs OpenSSL 3.0 or later (EVP_PKEY_get_group_name)"
#endif

#define CONTROL_TOPIC "$CONTROL/fleet/v1"
#define STATS_TOPIC "$fleet/v1/stats"
#define SESSIONS_TOPIC "$fleet/v1/sessions"
#define MAX_SERIAL_HEX 64 /* RFC 5280 allows 20 octets; leave room */
#define MAX_TEMPLATE 256
#define MAX_CA_FILES 8
#define LOG_FIELD 80

/*
 * Only the three entry points of mosquitto_plugin.h are exported: the units'
 * functions are hidden, so that no symbol of the broker or of another plugin
 * can take the place of one of them, nor they of one of those.
 */
#pragma GCC visibility push(hidden)

/* table.c: string keys, an optional string value each. */
struct entry {
	struct entry *next;
	char *value;
	char key[];
};

struct table {
	struct entry **buckets;
	size_t nbuckets;
	size_t count;
};

int table_init(struct table *t, size_t nbuckets);
void table_free(struct table *t);
struct entry *table_find(const struct table *t, const char *key);
int table_put(struct table *t, const char *key, const char *value);

struct certs {
	X509 **items;
	size_t count;
};

/* The plugin's state: one per broker, the userdata of every callback. */
struct fleet {
	mosquitto_plugin_id_t *id;
	struct certs issuers; /* CAs whose leaves may connect (several during a rotation) */
	struct certs anchors; /* roots above them: only their validity is checked */
	/* The files they came from, read again on every reload (SIGHUP): the sidecar
	 * rewrites them when the fleet's issuing CAs change (fleet ca rotate-issuing). */
	char *issuing_paths[MAX_CA_FILES];
	char *root_paths[MAX_CA_FILES];
	size_t n_issuing_paths, n_root_paths;
	long skew;            /* seconds forgiven on validity */
	char *snapshot_path;
	char *sidecar_cn;
	unsigned char sidecar_pin[32];
	bool has_pin;
	char acl_before[MAX_TEMPLATE];
	char acl_after[MAX_TEMPLATE];
	long max_staleness; /* seconds; 0 = no staleness policy (fails open) */
	bool loaded;        /* one snapshot loaded completely */
	bool stale_logged;  /* the current stale period was logged */
	time_t fresh_at;    /* when revocation data was last known current */
	long long seq;      /* highest feed sequence applied */
	struct table serials;   /* revoked serials */
	struct table devices;   /* revoked device ids */
	struct table connected; /* device id -> serial it authenticated with */
	struct table since;     /* device id -> when it was admitted here (Unix ms, decimal) */
	bool announce_sessions; /* tell the sidecar of every admission (peer nodes) */
	bool json_log;      /* log_format json: the plugin's lines are JSON objects */
	unsigned long accepted, refused, kicked, taken_over;
	unsigned long refused_by_reason[FLEET_N_REASONS];
};

/* identifiers.c */
bool valid_device_id(const char *s, size_t len);
bool reserved_device_id(const char *s);
bool valid_serial_hex(const char *s);
char *serial_hex(X509 *cert);
int parse_seq(const char *text, long long *out);

/* certificate.c */
X509 *fleet_issuer(const struct fleet *f, X509 *cert);
int validity_reason(const struct fleet *f, X509 *cert, const struct timespec *now,
		enum fleet_reason expired, enum fleet_reason not_yet, enum fleet_reason *reason);
int issuer_reason(const struct fleet *f, X509 *issuer, const struct timespec *now,
		enum fleet_reason *reason);
int client_cert_reason(X509 *cert, enum fleet_reason *reason);
int single_cn(X509 *cert, unsigned char **out, size_t *len);
bool matches_pin(const struct fleet *f, X509 *cert);

/* admission.c */
bool is_sidecar(const struct fleet *f, const char *username);
int on_basic_auth(int event, void *event_data, void *userdata);

/* acl.c */
int parse_template(struct fleet *f, const char *tpl);
int on_acl_check(int event, void *event_data, void *userdata);

/* control.c */
int on_control(int event, void *event_data, void *userdata);

/* revocation.c */
int load_snapshot(struct fleet *f);
long long revocation_age(const struct fleet *f);
bool stale(const struct fleet *f);
void note_staleness(struct fleet *f);
bool kick_session(struct fleet *f, const char *device);
void kick_revoked_sessions(struct fleet *f);

/* sessions.c */
void note_admission(struct fleet *f, const char *device);
void close_older_session(struct fleet *f, const char *device, long long theirs);

/* trust.c */
void certs_free(struct certs *c);
int load_ca_file(struct certs *issuers, struct certs *anchors, const char *option,
		const char *path);
int settle_trust(struct fleet *f, struct certs *issuing_roots);
int remember_path(char **paths, size_t *n, const char *option, const char *value);
void reload_trust(struct fleet *f);
int leave_client_times_to_plugin(void);

/* event_log.c */
void log_safe(char *out, size_t outlen, const char *in, size_t inlen);
void event_log(const struct fleet *f, int level, const char *event, const char *message,
		const char *device, size_t device_len, const char *serial, const char *reason);
void refuse_log(struct fleet *f, const char *device, size_t device_len,
		const char *serial, enum fleet_reason reason);

#pragma GCC visibility pop

#endif
