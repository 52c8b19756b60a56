/*
 * fleet_plugin.c - Mosquitto 2.0 plugin (API v5) enforcing fleet device certificates.
 *
 * Runs with `require_certificate true` and WITHOUT `use_identity_as_username`
 * (with it Mosquitto skips MOSQ_EVT_BASIC_AUTH, so no plugin could refuse a
 * certificate-authenticated client at connect).
 *
 * Every trust constant (device id alphabet and length, reserved ids, allowed
 * key types, default skew, reason codes) comes from fleet_kernel.h, generated
 * from fleet/kernel/ by `python -m fleet.kernel.cheader`: none is written here.
 *
 * BASIC_AUTH makes fleet.kernel.admission.admit_client's checks in its order,
 * with its reason codes:
 *   1. no_certificate
 *   2. device_id_invalid      the subject has no CN or several
 *   3. unknown_issuer         not signed (name + signature) by a configured
 *                             issuing CA: cafile must hold the root, so any
 *                             sub-CA of the root passes the TLS handshake
 *   4. certificate_expired / certificate_not_yet_valid (leaf, with skew_seconds),
 *      issuer_expired         (the issuing CA, or the root above it)
 *   5. not_client_cert        basicConstraints cA=TRUE, or no EKU clientAuth;
 *      key_not_allowed        key type/size not in fleet_allowed_keys
 *   6. device_id_invalid      CN outside the device id rule, or reserved
 *   7. client_id_mismatch     client id != device id (else a takeover kicks
 *                             the real device)
 *   8. certificate_revoked, device_revoked
 *   9. revocation_state_stale no snapshot loaded, or no heartbeat from the
 *                             sidecar for max_staleness_seconds (fail closed)
 * then it overrides the username with the device id, which ACL_CHECK and the
 * kick use. The sidecar (CN `sidecar_cn`) passes 1-5, then its pin and client
 * id are checked instead of 6-9.
 *
 * Validity is the plugin's (with skew, and with a reason in the log), so the
 * TLS layer is told not to check times when it verifies CLIENT certificates
 * (the process-wide "ssl_client" verify parameters get X509_V_FLAG_NO_CHECK_TIME;
 * chain, signatures, purpose and crlfile are still checked by TLS, and
 * Mosquitto's own TLS client - bridges - keeps checking server certificates'
 * times). The sidecar validates a CRL's dates before installing it.
 *
 * ACL_CHECK: a device may only use the topic tree of `acl_template`
 * (default devices/%u/#); the sidecar may only publish to $CONTROL/fleet/v1.
 *
 * Options (plugin_opt_<name>):
 *     issuing_ca      PEM file of the CA(s) that sign device certificates;
 *                     may hold several (rotation) and may be repeated.
 *                     Self-issued certificates in it are roots (anchors),
 *                     unless it holds only roots (a single-level PKI).
 *                     Re-read with root_ca on SIGHUP (an issuing-CA rotation:
 *                     the sidecar rewrites the file); a file that does not
 *                     load keeps the previous set.
 *     root_ca         optional, repeatable: roots above the issuing CAs
 *                     (their validity is checked, they never admit a leaf)
 *     snapshot_file   the revocation snapshot (below)
 *     skew_seconds    clock skew forgiven on validity (FLEET_DEFAULT_SKEW_SECONDS)
 *     max_staleness_seconds  refuse devices when the revocation state is
 *                     older than this (default 30; 0 = never, fails open)
 *     sidecar_cn, sidecar_sha256, acl_template
 *     log_format      text (default) or json: refusals and kicks as JSON objects
 *                     ({"ts","level","logger","msg","event","device_id","serial",
 *                     "reason"}), like fleet's other logs
 *
 * CONTROL ($CONTROL/fleet/v1), accepted only from the sidecar identity (a
 * certificate of the issuing CA whose CN is `sidecar_cn`, a name no device id
 * can take because ':' is outside the device id alphabet, optionally pinned by
 * SHA-256). One command per line:
 *     revoke <seq> device <device_id> [<serial_hex> ...]
 *     revoke <seq> certificate <device_id> <serial_hex> [<serial_hex> ...]
 *     reload              re-read the snapshot file, kick revoked sessions
 *     heartbeat <seq>     the sidecar's feed is live (staleness policy)
 *     stats               publish the counters (JSON) to $fleet/v1/stats, to
 *                         the sidecar only (it alone may subscribe there)
 *
 * Snapshot file (written atomically by the sidecar, read at start, on
 * `reload` and on SIGHUP; entries are only ever added - revocation is
 * permanent - so an old or reset snapshot cannot un-revoke anything):
 *     fleet-revocations 1
 *     seq <n>
 *     written <unix seconds when the sidecar last heard from the feed>
 *     serial <lowercase hex, no leading zeros>
 *     device <device id>
 *     end
 * Until one snapshot loaded completely, devices are refused (fail closed).
 */
#define _DEFAULT_SOURCE /* timegm */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "fleet_kernel.h"

#if OPENSSL_VERSION_NUMBER < 0x30000000L
#error "fleet_plugin.c needs OpenSSL 3.0 or later (EVP_PKEY_get_group_name)"
#endif

#define CONTROL_TOPIC "$CONTROL/fleet/v1"
#define STATS_TOPIC "$fleet/v1/stats"
#define STATS_PAYLOAD 2048
#define DEFAULT_SIDECAR_CN "fleet:sidecar"
#define DEFAULT_ACL_TEMPLATE "devices/%u/#"
/* Not a trust rule: the broker's default when the option is absent (config.py writes it). */
#define DEFAULT_MAX_STALENESS_SECONDS 30
#define MAX_SERIAL_HEX 64 /* RFC 5280 allows 20 octets; leave room */
#define MAX_CONTROL_PAYLOAD (4u * 1024u * 1024u)
#define MAX_TEMPLATE 256
#define SNAPSHOT_LINE 256
#define LOG_FIELD 80

/* ------------------------------------------------------------------ */
/* A small string-keyed hash table (chained, FNV-1a), optional value.   */

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

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	while(*s){
		h ^= (unsigned char)*s++;
		h *= 1099511628211ULL;
	}
	return h;
}

static int table_init(struct table *t, size_t nbuckets)
{
	t->buckets = calloc(nbuckets, sizeof(*t->buckets));
	if(!t->buckets) return -1;
	t->nbuckets = nbuckets;
	t->count = 0;
	return 0;
}

static void table_free(struct table *t)
{
	size_t i;
	struct entry *e, *next;

	if(!t->buckets) return;
	for(i = 0; i < t->nbuckets; i++){
		for(e = t->buckets[i]; e; e = next){
			next = e->next;
			free(e->value);
			free(e);
		}
	}
	free(t->buckets);
	t->buckets = NULL;
	t->nbuckets = 0;
	t->count = 0;
}

static struct entry *table_find(const struct table *t, const char *key)
{
	struct entry *e;

	for(e = t->buckets[hash_str(key) % t->nbuckets]; e; e = e->next){
		if(!strcmp(e->key, key)) return e;
	}
	return NULL;
}

static void table_grow(struct table *t)
{
	size_t i, n = t->nbuckets * 2;
	struct entry **b, *e, *next;

	if(n < t->nbuckets) return;
	b = calloc(n, sizeof(*b));
	if(!b) return; /* keep the old, slower table */
	for(i = 0; i < t->nbuckets; i++){
		for(e = t->buckets[i]; e; e = next){
			size_t slot = hash_str(e->key) % n;
			next = e->next;
			e->next = b[slot];
			b[slot] = e;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

/* Insert key (or replace its value). 0 on success, -1 when out of memory. */
static int table_put(struct table *t, const char *key, const char *value)
{
	struct entry *e = table_find(t, key);
	char *copy = NULL;
	size_t len, slot;

	if(value){
		copy = strdup(value);
		if(!copy) return -1;
	}
	if(e){
		free(e->value);
		e->value = copy;
		return 0;
	}
	len = strlen(key);
	e = malloc(sizeof(*e) + len + 1);
	if(!e){
		free(copy);
		return -1;
	}
	memcpy(e->key, key, len + 1);
	e->value = copy;
	slot = hash_str(key) % t->nbuckets;
	e->next = t->buckets[slot];
	t->buckets[slot] = e;
	t->count++;
	if(t->count > t->nbuckets * 2) table_grow(t);
	return 0;
}

/* ------------------------------------------------------------------ */

struct certs {
	X509 **items;
	size_t count;
};

#define MAX_CA_FILES 8

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
	bool json_log;      /* log_format json: the plugin's lines are JSON objects */
	unsigned long accepted, refused, kicked;
	unsigned long refused_by_reason[FLEET_N_REASONS];
};

/* The device id rule's alphabet and length (fleet.kernel.device_id); no reserved check. */
static bool valid_device_id(const char *s, size_t len)
{
	size_t i;

	if(len == 0 || len > FLEET_MAX_DEVICE_ID) return false;
	for(i = 0; i < len; i++){
		unsigned char c = (unsigned char)s[i];
		if(!isascii(c)) return false;
		if(isalnum(c)) continue;
		if(c == '\0' || !strchr(FLEET_DEVICE_ID_PUNCTUATION, c)) return false;
	}
	return true;
}

static bool reserved_device_id(const char *s)
{
	size_t i;

	for(i = 0; i < FLEET_N_RESERVED_IDS; i++){
		if(!strcasecmp(s, fleet_reserved_ids[i])) return true;
	}
	return false;
}

/* Canonical serial: lowercase hex, no leading zeros ("0" for zero). */
static bool valid_serial_hex(const char *s)
{
	size_t i, len = strlen(s);

	if(len == 0 || len > MAX_SERIAL_HEX) return false;
	if(len > 1 && s[0] == '0') return false;
	for(i = 0; i < len; i++){
		if(!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
	}
	return true;
}

/* Copy untrusted text into out for logging: printable ASCII kept, the rest as '?'. */
static void log_safe(char *out, size_t outlen, const char *in, size_t inlen)
{
	size_t i, n = 0;

	if(outlen == 0) return;
	for(i = 0; i < inlen && n + 1 < outlen; i++){
		unsigned char c = (unsigned char)in[i];
		out[n++] = (c >= 0x21 && c < 0x7f) ? (char)c : '?';
	}
	if(i < inlen && n >= 3){
		out[n - 3] = out[n - 2] = out[n - 1] = '.';
	}
	out[n] = '\0';
}

/* Like log_safe, and no '"' or '\\' either: the result can sit in a JSON string. */
static void json_safe(char *out, size_t outlen, const char *in, size_t inlen)
{
	char *p;

	log_safe(out, outlen, in, inlen);
	for(p = out; *p; p++){
		if(*p == '"' || *p == '\\') *p = '?';
	}
}

static const char *level_name(int level)
{
	switch(level){
	case MOSQ_LOG_ERR: return "error";
	case MOSQ_LOG_WARNING: return "warning";
	case MOSQ_LOG_NOTICE: return "notice";
	default: return "info";
	}
}

/*
 * One event line: text (`fleet: <message>: device=... serial=... reason=...`) or,
 * with log_format json, one JSON object like fleet's other logs
 * ({"ts", "level", "logger", "msg", "event", "device_id", "serial", "reason"}).
 * device is untrusted (a certificate's CN) and cleaned; serial is canonical hex.
 */
static void event_log(const struct fleet *f, int level, const char *event, const char *message,
		const char *device, size_t device_len, const char *serial, const char *reason)
{
	char safe[LOG_FIELD];

	if(!f->json_log){
		log_safe(safe, sizeof(safe), device ? device : "-", device ? device_len : 1);
		if(reason){
			mosquitto_log_printf(level, "fleet: %s: device=%s serial=%s reason=%s",
					message, safe, serial ? serial : "-", reason);
		}else{
			mosquitto_log_printf(level, "fleet: %s: device=%s serial=%s",
					message, safe, serial ? serial : "-");
		}
		return;
	}else{
		struct timespec now;
		struct tm tm;
		char ts[64] = "", device_json[LOG_FIELD + 2] = "null", serial_json[MAX_SERIAL_HEX + 4] = "null";
		char reason_json[LOG_FIELD] = "null";

		if(clock_gettime(CLOCK_REALTIME, &now) == 0 && gmtime_r(&now.tv_sec, &tm)){
			char base[32];
			strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
			snprintf(ts, sizeof(ts), "%.20s.%03u+00:00", base,
					(unsigned)((unsigned long)now.tv_nsec / 1000000UL % 1000UL));
		}
		if(device){
			json_safe(safe, sizeof(safe), device, device_len);
			snprintf(device_json, sizeof(device_json), "\"%s\"", safe);
		}
		if(serial) snprintf(serial_json, sizeof(serial_json), "\"%s\"", serial);
		if(reason) snprintf(reason_json, sizeof(reason_json), "\"%s\"", reason);
		mosquitto_log_printf(level,
				"{\"ts\":\"%s\",\"level\":\"%s\",\"logger\":\"fleet.broker.mosquitto.plugin\","
				"\"msg\":\"%s\",\"event\":\"%s\",\"device_id\":%s,\"serial\":%s,\"reason\":%s}",
				ts, level_name(level), message, event, device_json, serial_json, reason_json);
	}
}

static void refuse_log(struct fleet *f, const char *device, size_t device_len,
		const char *serial, enum fleet_reason reason)
{
	if((unsigned)reason >= FLEET_N_REASONS) reason = FLEET_R_INTERNAL_ERROR;
	f->refused++;
	f->refused_by_reason[reason]++;
	event_log(f, MOSQ_LOG_NOTICE, "connection_refused", "refused connection",
			device, device_len, serial, fleet_reason_codes[reason]);
}

/* The certificate serial as canonical hex; caller frees with OPENSSL_free. */
static char *serial_hex(X509 *cert)
{
	BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
	char *hex, *p, *q;

	if(!bn) return NULL;
	hex = BN_bn2hex(bn);
	BN_free(bn);
	if(!hex) return NULL;
	for(p = hex; *p; p++) *p = (char)tolower((unsigned char)*p);
	/* Strip leading zeros (BN_bn2hex pads to whole bytes), keep one digit. */
	p = hex;
	if(*p == '-') p++; /* negative serials never match a valid entry */
	q = p;
	while(q[0] == '0' && q[1] != '\0') q++;
	if(q != p) memmove(p, q, strlen(q) + 1);
	return hex;
}

/* The configured issuing CA that signed cert (issuer name and signature), or NULL. */
static X509 *fleet_issuer(const struct fleet *f, X509 *cert)
{
	size_t i;

	for(i = 0; i < f->issuers.count; i++){
		X509 *ca = f->issuers.items[i];
		EVP_PKEY *key = X509_get0_pubkey(ca);
		if(X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca)) != 0) continue;
		if(key && X509_verify(cert, key) == 1) return ca;
		ERR_clear_error();
	}
	return NULL;
}

static int asn1_epoch(const ASN1_TIME *t, long long *out)
{
	struct tm tm;

	memset(&tm, 0, sizeof(tm));
	if(!t || ASN1_TIME_to_tm(t, &tm) != 1) return -1;
	*out = (long long)timegm(&tm);
	return 0;
}

/* fleet.kernel.certs.validity_problem: outside [notBefore - skew, notAfter + skew]? */
static int validity_reason(const struct fleet *f, X509 *cert, const struct timespec *now,
		enum fleet_reason expired, enum fleet_reason not_yet, enum fleet_reason *reason)
{
	long long not_before, not_after;

	if(asn1_epoch(X509_get0_notBefore(cert), &not_before)
			|| asn1_epoch(X509_get0_notAfter(cert), &not_after)){
		*reason = expired;
		return -1;
	}
	if((long long)now->tv_sec > not_after + f->skew
			|| ((long long)now->tv_sec == not_after + f->skew && now->tv_nsec > 0)){
		*reason = expired;
		return -1;
	}
	if((long long)now->tv_sec < not_before - f->skew){
		*reason = not_yet;
		return -1;
	}
	return 0;
}

/* fleet.kernel.admission._issuer_problem: the issuing CA, and the root above it, in validity. */
static int issuer_reason(const struct fleet *f, X509 *issuer, const struct timespec *now,
		enum fleet_reason *reason)
{
	size_t i;

	if(validity_reason(f, issuer, now, FLEET_R_ISSUER_EXPIRED, FLEET_R_ISSUER_EXPIRED, reason)){
		return -1;
	}
	for(i = 0; i < f->anchors.count; i++){
		X509 *anchor = f->anchors.items[i];
		if(X509_NAME_cmp(X509_get_subject_name(anchor), X509_get_issuer_name(issuer)) == 0){
			return validity_reason(f, anchor, now, FLEET_R_ISSUER_EXPIRED,
					FLEET_R_ISSUER_EXPIRED, reason);
		}
	}
	return 0;
}

/* The key's entry in fleet_allowed_keys exists? (fleet.kernel.keys.key_type_of) */
static bool key_allowed(X509 *cert)
{
	EVP_PKEY *key = X509_get0_pubkey(cert);
	char curve[64] = "";
	size_t curve_len = 0, i;
	int kind, bits;

	if(!key) return false;
	switch(EVP_PKEY_get_base_id(key)){
	case EVP_PKEY_EC:
		kind = FLEET_KEY_EC;
		if(EVP_PKEY_get_group_name(key, curve, sizeof(curve), &curve_len) != 1) return false;
		break;
	case EVP_PKEY_ED25519:
		kind = FLEET_KEY_ED25519;
		break;
	case EVP_PKEY_RSA:
		kind = FLEET_KEY_RSA;
		break;
	default:
		return false;
	}
	bits = EVP_PKEY_get_bits(key);
	for(i = 0; i < FLEET_N_ALLOWED_KEYS; i++){
		const struct fleet_key_type *k = &fleet_allowed_keys[i];
		if((int)k->kind != kind) continue;
		if(kind == FLEET_KEY_EC && !strcmp(k->curve, curve)) return true;
		if(kind == FLEET_KEY_RSA && k->bits == bits) return true;
		if(kind == FLEET_KEY_ED25519) return true;
	}
	return false;
}

/* fleet.kernel.certs.client_cert_problem: a CA, no EKU clientAuth, or a key we refuse. */
static int client_cert_reason(X509 *cert, enum fleet_reason *reason)
{
	int crit = -1, i;
	BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(cert, NID_basic_constraints, &crit, NULL);
	EXTENDED_KEY_USAGE *eku;
	bool is_ca = (bc && bc->ca) || crit == -2; /* a duplicated extension is not trusted */
	bool client_auth = false;

	BASIC_CONSTRAINTS_free(bc);
	if(is_ca){
		*reason = FLEET_R_NOT_CLIENT_CERT;
		return -1;
	}
	eku = X509_get_ext_d2i(cert, NID_ext_key_usage, &crit, NULL);
	for(i = 0; eku && i < sk_ASN1_OBJECT_num(eku); i++){
		if(OBJ_obj2nid(sk_ASN1_OBJECT_value(eku, i)) == NID_client_auth) client_auth = true;
	}
	sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
	if(!client_auth){
		*reason = FLEET_R_NOT_CLIENT_CERT;
		return -1;
	}
	if(!key_allowed(cert)){
		*reason = FLEET_R_KEY_NOT_ALLOWED;
		return -1;
	}
	return 0;
}

/* The one CN of the subject: 0 with out and len set, -1 if none or several. */
/*
 * The one CN of the subject, as UTF-8 (whatever its ASN.1 string type: a BMPString
 * must not be read as raw bytes, or two CNs that differ for the kernel could be one
 * device here): 0 with *out (free with OPENSSL_free) and *len set; -1 if none or
 * several, or not convertible.
 */
static int single_cn(X509 *cert, unsigned char **out, size_t *len)
{
	X509_NAME *name = X509_get_subject_name(cert);
	int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	const ASN1_STRING *data;
	int n;

	if(idx < 0) return -1;
	if(X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0) return -1;
	data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
	if(!data) return -1;
	n = ASN1_STRING_to_UTF8(out, data);
	if(n <= 0){
		OPENSSL_free(*out);
		*out = NULL;
		return -1;
	}
	*len = (size_t)n;
	return 0;
}

static bool matches_pin(const struct fleet *f, X509 *cert)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if(!f->has_pin) return true;
	if(X509_digest(cert, EVP_sha256(), md, &mdlen) != 1 || mdlen != sizeof(f->sidecar_pin)) return false;
	return CRYPTO_memcmp(md, f->sidecar_pin, sizeof(f->sidecar_pin)) == 0;
}

static bool is_sidecar(const struct fleet *f, const char *username)
{
	return username != NULL && !strcmp(username, f->sidecar_cn);
}

static long long revocation_age(const struct fleet *f)
{
	return (long long)(time(NULL) - f->fresh_at);
}

static bool stale(const struct fleet *f)
{
	return !f->loaded || (f->max_staleness > 0 && revocation_age(f) > f->max_staleness);
}

/* Log when the revocation state becomes stale and when it is fresh again. */
static void note_staleness(struct fleet *f)
{
	bool now_stale = stale(f);

	if(now_stale && !f->stale_logged){
		if(f->loaded){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"fleet: revocation state is %llds old (max_staleness_seconds %ld): "
					"refusing new device connections (reason=%s) until the sidecar is back",
					revocation_age(f), f->max_staleness,
					fleet_reason_codes[FLEET_R_REVOCATION_STATE_STALE]);
		}
		f->stale_logged = true;
	}else if(!now_stale && f->stale_logged){
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"fleet: revocation state is current again (seq %lld); admitting devices", f->seq);
		f->stale_logged = false;
	}
}

/* ------------------------------------------------------------------ */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct fleet *f = userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	X509 *cert, *issuer;
	char *serial = NULL;
	const char *cn = NULL, *client_id, *username;
	unsigned char *cn_utf8 = NULL;
	struct entry *admitted;
	bool recheck;
	size_t cn_len = 0;
	char device[FLEET_MAX_DEVICE_ID + 1];
	struct timespec now;
	enum fleet_reason reason;
	int rc = MOSQ_ERR_AUTH;

	(void)event;
	/*
	 * Mosquitto also runs BASIC_AUTH for every session it holds when it reloads
	 * (SIGHUP). A session this plugin admitted (its username is then the device
	 * id) may be there after a kick with its TLS already gone: it is on its way
	 * out, not a connection, so it is neither logged nor counted. Live sessions
	 * are checked again in full, but not counted as accepted twice.
	 */
	username = mosquitto_client_username(ed->client);
	admitted = username ? table_find(&f->connected, username) : NULL;
	/* The order is fleet.kernel.admission.admit_client's. */
	cert = mosquitto_client_certificate(ed->client);
	if(!cert){
		if(admitted) return MOSQ_ERR_AUTH;
		refuse_log(f, NULL, 0, NULL, FLEET_R_NO_CERTIFICATE);
		return MOSQ_ERR_AUTH;
	}
	serial = serial_hex(cert);
	if(!serial){
		refuse_log(f, NULL, 0, NULL, FLEET_R_INTERNAL_ERROR);
		goto out;
	}
	recheck = admitted && admitted->value && !strcmp(admitted->value, serial);
	if(single_cn(cert, &cn_utf8, &cn_len) != 0){
		refuse_log(f, NULL, 0, serial, FLEET_R_DEVICE_ID_INVALID);
		goto out;
	}
	cn = (const char *)cn_utf8;
	issuer = fleet_issuer(f, cert);
	if(!issuer){
		refuse_log(f, cn, cn_len, serial, FLEET_R_UNKNOWN_ISSUER);
		goto out;
	}
	if(clock_gettime(CLOCK_REALTIME, &now) != 0){
		refuse_log(f, cn, cn_len, serial, FLEET_R_INTERNAL_ERROR);
		goto out;
	}
	if(validity_reason(f, cert, &now, FLEET_R_CERTIFICATE_EXPIRED,
				FLEET_R_CERTIFICATE_NOT_YET_VALID, &reason)
			|| issuer_reason(f, issuer, &now, &reason)
			|| client_cert_reason(cert, &reason)){
		refuse_log(f, cn, cn_len, serial, reason);
		goto out;
	}
	client_id = mosquitto_client_id(ed->client);

	if(cn_len == strlen(f->sidecar_cn) && !memcmp(cn, f->sidecar_cn, cn_len)){
		if(!matches_pin(f, cert)){
			refuse_log(f, cn, cn_len, serial, FLEET_R_SIDECAR_PIN_MISMATCH);
		}else if(!client_id || strcmp(client_id, f->sidecar_cn)){
			refuse_log(f, cn, cn_len, serial, FLEET_R_CLIENT_ID_MISMATCH);
		}else if(mosquitto_set_username(ed->client, f->sidecar_cn) != MOSQ_ERR_SUCCESS){
			refuse_log(f, cn, cn_len, serial, FLEET_R_INTERNAL_ERROR);
		}else{
			if(!username || strcmp(username, f->sidecar_cn)){ /* not a reload's re-check */
				mosquitto_log_printf(MOSQ_LOG_INFO, "fleet: sidecar connected (serial=%s)", serial);
			}
			rc = MOSQ_ERR_SUCCESS;
		}
		goto out;
	}

	if(!valid_device_id(cn, cn_len)){
		refuse_log(f, cn, cn_len, serial, FLEET_R_DEVICE_ID_INVALID);
		goto out;
	}
	memcpy(device, cn, cn_len);
	device[cn_len] = '\0';
	if(reserved_device_id(device)){
		refuse_log(f, device, cn_len, serial, FLEET_R_DEVICE_ID_INVALID);
		goto out;
	}
	if(!client_id || strcmp(client_id, device)){
		char safe[LOG_FIELD];
		log_safe(safe, sizeof(safe), client_id ? client_id : "-", client_id ? strlen(client_id) : 1);
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "fleet: client id was %s", safe);
		refuse_log(f, device, cn_len, serial, FLEET_R_CLIENT_ID_MISMATCH);
		goto out;
	}
	if(table_find(&f->serials, serial)){
		refuse_log(f, device, cn_len, serial, FLEET_R_CERTIFICATE_REVOKED);
		goto out;
	}
	if(table_find(&f->devices, device)){
		refuse_log(f, device, cn_len, serial, FLEET_R_DEVICE_REVOKED);
		goto out;
	}
	note_staleness(f);
	if(stale(f)){
		refuse_log(f, device, cn_len, serial, FLEET_R_REVOCATION_STATE_STALE);
		goto out;
	}
	if(mosquitto_set_username(ed->client, device) != MOSQ_ERR_SUCCESS
			|| table_put(&f->connected, device, serial) != 0){
		refuse_log(f, device, cn_len, serial, FLEET_R_INTERNAL_ERROR);
		goto out;
	}
	if(!recheck) f->accepted++;
	rc = MOSQ_ERR_SUCCESS;
out:
	OPENSSL_free(cn_utf8);
	OPENSSL_free(serial);
	X509_free(cert);
	return rc;
}

/* Whether topic (or a subscription filter) lies in the device's own tree. */
static bool in_device_tree(const struct fleet *f, const char *username, const char *topic)
{
	char base[2 * MAX_TEMPLATE + FLEET_MAX_DEVICE_ID + 1];
	int n = snprintf(base, sizeof(base), "%s%s%s", f->acl_before, username, f->acl_after);
	size_t len;

	if(n < 0 || (size_t)n >= sizeof(base)) return false;
	len = (size_t)n;
	return !strncmp(topic, base, len) && (topic[len] == '\0' || topic[len] == '/');
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct fleet *f = userdata;
	struct mosquitto_evt_acl_check *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);

	(void)event;
	if(!username || !ed->topic) return MOSQ_ERR_ACL_DENIED;
	if(is_sidecar(f, username)){
		if(ed->access == MOSQ_ACL_WRITE) {
			return !strcmp(ed->topic, CONTROL_TOPIC) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		}
		if(ed->access == MOSQ_ACL_READ || ed->access == MOSQ_ACL_SUBSCRIBE){
			return !strcmp(ed->topic, STATS_TOPIC) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		}
		return MOSQ_ERR_ACL_DENIED;
	}
	if(!valid_device_id(username, strlen(username))) return MOSQ_ERR_ACL_DENIED;
	return in_device_tree(f, username, ed->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

/* Kick every recorded session whose device or serial is revoked. */
static void kick_revoked_sessions(struct fleet *f)
{
	size_t i;
	struct entry *e;

	for(i = 0; i < f->connected.nbuckets; i++){
		for(e = f->connected.buckets[i]; e; e = e->next){
			if(table_find(&f->devices, e->key) || (e->value && table_find(&f->serials, e->value))){
				mosquitto_kick_client_by_username(e->key, false);
				f->kicked++;
			}
		}
	}
}

/* Read the snapshot file into the tables (union). 0 when complete. */
static int load_snapshot(struct fleet *f)
{
	FILE *fp = fopen(f->snapshot_path, "r");
	char line[SNAPSHOT_LINE];
	long long seq = -1;
	long long written = -1;
	bool header = false, end = false;
	unsigned long lineno = 0, added = 0;
	int err = 0;

	if(!fp){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: cannot open snapshot %s: %s",
				f->snapshot_path, strerror(errno));
		return -1;
	}
	while(!err && fgets(line, sizeof(line), fp)){
		size_t len = strlen(line);
		char *arg;

		lineno++;
		if(len == 0 || line[len - 1] != '\n'){
			err = 1; /* over-long or unterminated line */
			break;
		}
		line[--len] = '\0';
		if(end){
			err = 1;
			break;
		}
		if(!header){
			if(strcmp(line, "fleet-revocations 1")) err = 1;
			header = true;
			continue;
		}
		arg = strchr(line, ' ');
		if(arg) *arg++ = '\0';
		if(!strcmp(line, "end") && !arg){
			end = true;
		}else if(arg && !strcmp(line, "serial") && valid_serial_hex(arg)){
			if(table_put(&f->serials, arg, NULL)) err = 1;
			added++;
		}else if(arg && !strcmp(line, "device") && valid_device_id(arg, strlen(arg))){
			if(table_put(&f->devices, arg, NULL)) err = 1;
			added++;
		}else if(arg && !strcmp(line, "seq")){
			char *endp;
			errno = 0;
			seq = strtoll(arg, &endp, 10);
			if(errno || *endp || seq < 0) err = 1;
		}else if(arg && !strcmp(line, "written")){
			char *endp;
			errno = 0;
			written = strtoll(arg, &endp, 10);
			if(errno || *endp || written < 0) err = 1;
		}else{
			err = 1;
		}
	}
	if(ferror(fp)) err = 1;
	fclose(fp);
	if(err || !end || seq < 0 || written < 0){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: snapshot %s is invalid or incomplete (line %lu); revocation data not refreshed",
				f->snapshot_path, lineno);
		return -1;
	}
	if(seq > f->seq) f->seq = seq;
	if(!f->loaded || (time_t)written > f->fresh_at) f->fresh_at = (time_t)written;
	f->loaded = true;
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"fleet: loaded snapshot seq=%lld (%lu entries; %lu serials, %lu devices revoked)",
			seq, added, (unsigned long)f->serials.count, (unsigned long)f->devices.count);
	return 0;
}

static int parse_seq(const char *text, long long *out)
{
	char *endp;

	if(!text) return -1;
	errno = 0;
	*out = strtoll(text, &endp, 10);
	return (errno || *endp || *out < 0) ? -1 : 0;
}

/* Publish the counters as one JSON object to the sidecar only. 0 on success. */
static int publish_stats(struct fleet *f)
{
	char buf[STATS_PAYLOAD];
	size_t used = 0, i;
	int n;

	note_staleness(f);
	n = snprintf(buf, sizeof(buf),
			"{\"accepted\":%lu,\"refused\":%lu,\"kicked\":%lu,\"seq\":%lld,"
			"\"loaded\":%s,\"stale\":%s,\"fresh_age\":%lld,\"max_staleness\":%ld,"
			"\"refused_by_reason\":{",
			f->accepted, f->refused, f->kicked, f->seq,
			f->loaded ? "true" : "false", stale(f) ? "true" : "false",
			revocation_age(f), f->max_staleness);
	if(n < 0 || (size_t)n >= sizeof(buf)) return -1;
	used = (size_t)n;
	for(i = 0; i < FLEET_N_REASONS; i++){
		n = snprintf(buf + used, sizeof(buf) - used, "%s\"%s\":%lu",
				i ? "," : "", fleet_reason_codes[i], f->refused_by_reason[i]);
		if(n < 0 || (size_t)n >= sizeof(buf) - used) return -1;
		used += (size_t)n;
	}
	n = snprintf(buf + used, sizeof(buf) - used, "}}");
	if(n < 0 || (size_t)n >= sizeof(buf) - used) return -1;
	used += (size_t)n;
	return mosquitto_broker_publish_copy(f->sidecar_cn, STATS_TOPIC, (int)used, buf, 0, false, NULL)
		== MOSQ_ERR_SUCCESS ? 0 : -1;
}

/* One control line, NUL-terminated and modifiable. 0 on success. */
static int control_line(struct fleet *f, char *line)
{
	char *save = NULL;
	char *cmd = strtok_r(line, " ", &save);
	long long seq;

	if(!cmd) return 0; /* blank line */
	if(!strcmp(cmd, "reload")){
		if(strtok_r(NULL, " ", &save)) return -1;
		/* Freshness is the snapshot's `written` (when the sidecar last heard from
		 * the feed), not now: a resync while the feed is down must not look fresh. */
		if(load_snapshot(f)) return -1;
		note_staleness(f);
		kick_revoked_sessions(f);
		return 0;
	}
	if(!strcmp(cmd, "stats")){
		if(strtok_r(NULL, " ", &save)) return -1;
		return publish_stats(f);
	}
	if(!strcmp(cmd, "heartbeat")){
		if(parse_seq(strtok_r(NULL, " ", &save), &seq) || strtok_r(NULL, " ", &save)) return -1;
		if(seq > f->seq) f->seq = seq;
		f->fresh_at = time(NULL);
		note_staleness(f);
		return 0;
	}
	if(!strcmp(cmd, "revoke")){
		const char *kind, *device;
		const char *connected_serial;
		struct entry *e;
		bool is_device, kick;
		char *serial;

		if(parse_seq(strtok_r(NULL, " ", &save), &seq)) return -1;
		kind = strtok_r(NULL, " ", &save);
		device = strtok_r(NULL, " ", &save);
		if(!kind || !device || !valid_device_id(device, strlen(device))) return -1;
		if(!strcmp(kind, "device")) is_device = true;
		else if(!strcmp(kind, "certificate")) is_device = false;
		else return -1;

		e = table_find(&f->connected, device);
		connected_serial = e ? e->value : NULL;
		kick = is_device;
		if(is_device && table_put(&f->devices, device, NULL)) return -1;
		while((serial = strtok_r(NULL, " ", &save)) != NULL){
			if(!valid_serial_hex(serial)) return -1;
			if(table_put(&f->serials, serial, NULL)) return -1;
			if(connected_serial && !strcmp(connected_serial, serial)) kick = true;
		}
		if(seq > f->seq) f->seq = seq;
		f->fresh_at = time(NULL);
		if(kick){
			mosquitto_kick_client_by_username(device, false);
			f->kicked++;
			if(f->json_log){
				event_log(f, MOSQ_LOG_NOTICE, "session_kicked", "revoked: session closed",
						device, strlen(device), connected_serial,
						fleet_reason_codes[is_device ? FLEET_R_DEVICE_REVOKED : FLEET_R_CERTIFICATE_REVOKED]);
			}else{
				mosquitto_log_printf(MOSQ_LOG_NOTICE,
						"fleet: revoked device=%s seq=%lld: session closed", device, seq);
			}
		}else{
			mosquitto_log_printf(MOSQ_LOG_INFO, "fleet: revoked device=%s seq=%lld (%s)",
					device, seq, is_device ? "device" : "certificate");
		}
		return 0;
	}
	return -1;
}

static int on_control(int event, void *event_data, void *userdata)
{
	struct fleet *f = userdata;
	struct mosquitto_evt_control *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	char *text, *line, *save = NULL;
	unsigned long n = 0, bad = 0;

	(void)event;
	if(!is_sidecar(f, username)){
		char safe[LOG_FIELD];
		log_safe(safe, sizeof(safe), username ? username : "-", username ? strlen(username) : 1);
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fleet: control message from %s ignored", safe);
		return MOSQ_ERR_ACL_DENIED;
	}
	if(ed->payloadlen > MAX_CONTROL_PAYLOAD || (ed->payloadlen > 0 && !ed->payload)){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fleet: control message too large, ignored");
		return MOSQ_ERR_INVAL;
	}
	if(memchr(ed->payload, '\0', ed->payloadlen)){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fleet: control message holds NUL, ignored");
		return MOSQ_ERR_INVAL;
	}
	text = malloc((size_t)ed->payloadlen + 1);
	if(!text) return MOSQ_ERR_NOMEM;
	if(ed->payloadlen) memcpy(text, ed->payload, ed->payloadlen);
	text[ed->payloadlen] = '\0';
	for(line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)){
		n++;
		if(control_line(f, line)){
			bad++;
		}
	}
	free(text);
	if(bad){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: %lu of %lu control command(s) failed", bad, n);
		return MOSQ_ERR_INVAL;
	}
	return MOSQ_ERR_SUCCESS;
}

static void reload_trust(struct fleet *f);

static int on_reload(int event, void *event_data, void *userdata)
{
	struct fleet *f = userdata;

	(void)event;
	(void)event_data;
	reload_trust(f);
	if(load_snapshot(f) == 0) kick_revoked_sessions(f);
	note_staleness(f);
	return MOSQ_ERR_PLUGIN_DEFER; /* let other plugins see the reload too */
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	note_staleness(userdata); /* the log says when refusing starts, not at the first refusal */
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------ */

static int certs_add(struct certs *c, X509 *cert)
{
	X509 **items = realloc(c->items, (c->count + 1) * sizeof(*items));

	if(!items) return -1;
	c->items = items;
	c->items[c->count++] = cert;
	return 0;
}

static void certs_free(struct certs *c)
{
	size_t i;

	for(i = 0; i < c->count; i++) X509_free(c->items[i]);
	free(c->items);
	c->items = NULL;
	c->count = 0;
}

static bool self_issued(X509 *cert)
{
	return X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)) == 0;
}

/* Every CA certificate of a PEM file (a bundle) into issuers or anchors. 0 on success. */
static int load_ca_file(struct certs *issuers, struct certs *anchors, const char *option,
		const char *path)
{
	FILE *fp = fopen(path, "r");
	X509 *cert;
	unsigned long n = 0;

	if(!fp){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: cannot open %s %s: %s", option, path, strerror(errno));
		return -1;
	}
	while((cert = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL){
		int crit = -1;
		BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(cert, NID_basic_constraints, &crit, NULL);
		bool ca = bc && bc->ca;

		BASIC_CONSTRAINTS_free(bc);
		n++;
		if(!ca){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"fleet: %s %s: certificate %lu is not a CA, ignored", option, path, n);
			X509_free(cert);
			continue;
		}
		if(certs_add((issuers && !self_issued(cert)) ? issuers : anchors, cert)){
			X509_free(cert);
			fclose(fp);
			return -1;
		}
	}
	ERR_clear_error(); /* the end of the file reads as a PEM "no start line" error */
	fclose(fp);
	if(n == 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: %s %s holds no PEM certificate", option, path);
		return -1;
	}
	return 0;
}

/*
 * Like fleet.kernel.admission.TrustPolicy.from_bundle: of the issuing_ca files,
 * CAs issued by another CA are the issuers, self-issued ones anchors; with only
 * self-issued CAs there, they are the issuers (a single-level fleet PKI).
 */
static int settle(struct certs *issuers, struct certs *anchors, struct certs *issuing_roots)
{
	size_t i;

	if(issuers->count == 0){
		struct certs swap = *issuers;
		*issuers = *issuing_roots;
		*issuing_roots = swap;
	}
	for(i = 0; i < issuing_roots->count; i++){
		if(certs_add(anchors, issuing_roots->items[i])) return -1;
		issuing_roots->items[i] = NULL;
	}
	free(issuing_roots->items);
	issuing_roots->items = NULL;
	issuing_roots->count = 0;
	if(issuers->count == 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: plugin_opt_issuing_ca holds no CA certificate");
		return -1;
	}
	return 0;
}

static int settle_trust(struct fleet *f, struct certs *issuing_roots)
{
	return settle(&f->issuers, &f->anchors, issuing_roots);
}

static int remember_path(char **paths, size_t *n, const char *option, const char *value)
{
	if(*n >= MAX_CA_FILES){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: at most %d %s files", MAX_CA_FILES, option);
		return -1;
	}
	paths[*n] = strdup(value);
	if(!paths[*n]) return -1;
	(*n)++;
	return 0;
}

/*
 * Read the issuing_ca and root_ca files again; on any error keep the set in
 * use (a half-written file must not leave the broker trusting nothing, or
 * anything). Called on every reload (SIGHUP).
 */
static void reload_trust(struct fleet *f)
{
	struct certs issuers = {NULL, 0}, anchors = {NULL, 0}, issuing_roots = {NULL, 0};
	size_t i;
	int bad = 0;

	for(i = 0; i < f->n_issuing_paths && !bad; i++){
		bad = load_ca_file(&issuers, &issuing_roots, "issuing_ca", f->issuing_paths[i]);
	}
	for(i = 0; i < f->n_root_paths && !bad; i++){
		bad = load_ca_file(NULL, &anchors, "root_ca", f->root_paths[i]);
	}
	if(!bad) bad = settle(&issuers, &anchors, &issuing_roots);
	if(bad){
		certs_free(&issuers);
		certs_free(&anchors);
		certs_free(&issuing_roots);
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: issuing_ca/root_ca not reloaded; keeping the %lu issuing CA(s) in use",
				(unsigned long)f->issuers.count);
		return;
	}
	certs_free(&f->issuers);
	certs_free(&f->anchors);
	f->issuers = issuers;
	f->anchors = anchors;
	mosquitto_log_printf(MOSQ_LOG_INFO, "fleet: trust reloaded (%lu issuing CA(s), %lu root(s))",
			(unsigned long)f->issuers.count, (unsigned long)f->anchors.count);
}

/*
 * Tell OpenSSL not to check validity times when this process verifies a
 * CLIENT certificate (the "ssl_client" verify parameters a TLS server
 * inherits): the plugin checks them with skew, and names the reason.
 */
static int leave_client_times_to_plugin(void)
{
	const X509_VERIFY_PARAM *builtin = X509_VERIFY_PARAM_lookup("ssl_client");
	X509_VERIFY_PARAM *param = X509_VERIFY_PARAM_new();

	if(!param || !builtin || !X509_VERIFY_PARAM_set1(param, builtin)
			|| !X509_VERIFY_PARAM_set1_name(param, "ssl_client")
			|| !X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_NO_CHECK_TIME)
			|| !X509_VERIFY_PARAM_add0_table(param)){
		X509_VERIFY_PARAM_free(param);
		return -1;
	}
	return 0;
}

static int parse_pin(struct fleet *f, const char *hex)
{
	size_t i, j = 0;

	for(i = 0; hex[i]; i++){
		int hi, lo;
		if(hex[i] == ':') continue;
		if(j >= sizeof(f->sidecar_pin) || !isxdigit((unsigned char)hex[i])
				|| !isxdigit((unsigned char)hex[i + 1])){
			return -1;
		}
		hi = isdigit((unsigned char)hex[i]) ? hex[i] - '0' : tolower((unsigned char)hex[i]) - 'a' + 10;
		lo = isdigit((unsigned char)hex[i + 1]) ? hex[i + 1] - '0' : tolower((unsigned char)hex[i + 1]) - 'a' + 10;
		f->sidecar_pin[j++] = (unsigned char)(hi * 16 + lo);
		i++;
	}
	if(j != sizeof(f->sidecar_pin)) return -1;
	f->has_pin = true;
	return 0;
}

/* "devices/%u/#" -> before "devices/", after "". Exactly one %u, ends in "/#", no other wildcard. */
static int parse_template(struct fleet *f, const char *tpl)
{
	size_t len = strlen(tpl);
	const char *u = strstr(tpl, "%u");
	size_t before, after;

	if(len < 4 || len >= MAX_TEMPLATE || strcmp(tpl + len - 2, "/#") || !u) return -1;
	if(strstr(u + 2, "%u")) return -1;
	if(strpbrk(tpl, "+") || memchr(tpl, '#', len - 1)) return -1;
	before = (size_t)(u - tpl);
	after = len - 2 - before - 2;
	if(u + 2 > tpl + len - 2) return -1;
	memcpy(f->acl_before, tpl, before);
	f->acl_before[before] = '\0';
	memcpy(f->acl_after, u + 2, after);
	f->acl_after[after] = '\0';
	return 0;
}

static void fleet_free(struct fleet *f)
{
	size_t i;

	if(!f) return;
	for(i = 0; i < f->n_issuing_paths; i++) free(f->issuing_paths[i]);
	for(i = 0; i < f->n_root_paths; i++) free(f->root_paths[i]);
	certs_free(&f->issuers);
	certs_free(&f->anchors);
	free(f->snapshot_path);
	free(f->sidecar_cn);
	table_free(&f->serials);
	table_free(&f->devices);
	table_free(&f->connected);
	free(f);
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	int i;

	for(i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

static int parse_seconds(const char *key, const char *value, long *out)
{
	char *endp;

	errno = 0;
	*out = strtol(value, &endp, 10);
	if(errno || *endp || !value[0] || *out < 0 || *out > 365L * 86400L){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: %s must be a whole number of seconds >= 0", key);
		return -1;
	}
	return 0;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *opts, int opt_count)
{
	struct fleet *f = calloc(1, sizeof(*f));
	struct certs issuing_roots = {NULL, 0};
	const char *template = DEFAULT_ACL_TEMPLATE, *sidecar_cn = DEFAULT_SIDECAR_CN;
	bool has_issuing_ca = false;
	int i;

	if(!f) return MOSQ_ERR_NOMEM;
	f->id = identifier;
	f->skew = FLEET_DEFAULT_SKEW_SECONDS;
	f->max_staleness = DEFAULT_MAX_STALENESS_SECONDS;
	if(table_init(&f->serials, 1024) || table_init(&f->devices, 256) || table_init(&f->connected, 1024)){
		fleet_free(f);
		return MOSQ_ERR_NOMEM;
	}
	for(i = 0; i < opt_count; i++){
		const char *key = opts[i].key, *value = opts[i].value;
		if(!key || !value) continue;
		if(!strcmp(key, "issuing_ca")){
			/* Repeatable, and each file may hold several CAs (an issuing-CA rotation). */
			if(load_ca_file(&f->issuers, &issuing_roots, "issuing_ca", value)) goto fail;
			if(remember_path(f->issuing_paths, &f->n_issuing_paths, key, value)) goto fail;
			has_issuing_ca = true;
		}else if(!strcmp(key, "root_ca")){
			if(load_ca_file(NULL, &f->anchors, "root_ca", value)) goto fail;
			if(remember_path(f->root_paths, &f->n_root_paths, key, value)) goto fail;
		}else if(!strcmp(key, "snapshot_file")){
			free(f->snapshot_path);
			f->snapshot_path = strdup(value);
		}else if(!strcmp(key, "sidecar_cn")){
			sidecar_cn = value;
		}else if(!strcmp(key, "sidecar_sha256")){
			if(parse_pin(f, value)){
				mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: sidecar_sha256 must be 64 hex digits");
				goto fail;
			}
		}else if(!strcmp(key, "acl_template")){
			template = value;
		}else if(!strcmp(key, "max_staleness_seconds")){
			if(parse_seconds(key, value, &f->max_staleness)) goto fail;
		}else if(!strcmp(key, "skew_seconds")){
			if(parse_seconds(key, value, &f->skew)) goto fail;
		}else if(!strcmp(key, "log_format")){
			if(!strcmp(value, "json")) f->json_log = true;
			else if(!strcmp(value, "text")) f->json_log = false;
			else{
				mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: log_format must be text or json");
				goto fail;
			}
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: unknown plugin option %s", key);
			goto fail;
		}
	}
	if(!has_issuing_ca || !f->snapshot_path){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: plugin_opt_issuing_ca and plugin_opt_snapshot_file are required");
		goto fail;
	}
	if(settle_trust(f, &issuing_roots)) goto fail;
	if(!sidecar_cn[0] || strlen(sidecar_cn) > FLEET_MAX_DEVICE_ID + 16
			|| valid_device_id(sidecar_cn, strlen(sidecar_cn))){
		/* A sidecar CN that is a valid device id could be enrolled by a device. */
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: sidecar_cn must contain a character outside the device id alphabet (e.g. ':')");
		goto fail;
	}
	f->sidecar_cn = strdup(sidecar_cn);
	if(!f->sidecar_cn) goto fail;
	if(parse_template(f, template)){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: acl_template must contain one %%u, end in /# and have no other wildcard");
		goto fail;
	}
	if(leave_client_times_to_plugin()){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: cannot set the TLS client verification parameters");
		goto fail;
	}
	if(load_snapshot(f)){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: no revocation snapshot: devices are refused until the sidecar syncs");
	}
	if(mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, f)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, f)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, f)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, on_reload, NULL, f)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, f)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: cannot register callbacks");
		goto fail;
	}
	*userdata = f;
	mosquitto_log_printf(MOSQ_LOG_INFO,
			"fleet: plugin ready (%lu issuing CA(s), %lu root(s), skew %lds, sidecar %s%s, "
			"staleness limit %lds)",
			(unsigned long)f->issuers.count, (unsigned long)f->anchors.count, f->skew,
			f->sidecar_cn, f->has_pin ? ", pinned" : "", f->max_staleness);
	if(f->max_staleness == 0){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"fleet: max_staleness_seconds 0: devices are admitted on revocation data of any age "
				"(fails open while the sidecar is away)");
	}
	return MOSQ_ERR_SUCCESS;
fail:
	certs_free(&issuing_roots);
	fleet_free(f);
	return MOSQ_ERR_INVAL;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	struct fleet *f = userdata;

	(void)opts;
	(void)opt_count;
	if(!f) return MOSQ_ERR_SUCCESS;
	mosquitto_log_printf(MOSQ_LOG_INFO, "fleet: accepted=%lu refused=%lu kicked=%lu",
			f->accepted, f->refused, f->kicked);
	mosquitto_callback_unregister(f->id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(f->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(f->id, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC);
	mosquitto_callback_unregister(f->id, MOSQ_EVT_RELOAD, on_reload, NULL);
	mosquitto_callback_unregister(f->id, MOSQ_EVT_TICK, on_tick, NULL);
	fleet_free(f);
	return MOSQ_ERR_SUCCESS;
}
