/*
 * fleet_plugin.c - Mosquitto 2.0 plugin (API v5) enforcing fleet device certificates.
 *
 * Runs with `require_certificate true` and WITHOUT `use_identity_as_username`
 * (with it Mosquitto skips MOSQ_EVT_BASIC_AUTH, so no plugin could refuse a
 * certificate-authenticated client at connect).
 *
 * BASIC_AUTH: the TLS layer already verified the chain against `cafile`
 * (fleet root + issuing CA). Because `cafile` must hold the root, any other
 * sub-CA of that root would pass the handshake too, so the plugin checks that
 * the leaf was issued by the configured fleet issuing CA (issuer name AND
 * authority key identifier), derives the device id from the one CN, refuses
 * revoked serials and devices, refuses a client id other than the device id
 * (a takeover would otherwise kick the real device) and overrides the
 * username with the device id, which ACL_CHECK and the kick use.
 *
 * ACL_CHECK: a device may only use the topic tree of `acl_template`
 * (default devices/%u/#); the sidecar may only publish to $CONTROL/fleet/v1.
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
 *     written <unix seconds>
 *     serial <lowercase hex, no leading zeros>
 *     device <device id>
 *     end
 * Until one snapshot loaded completely, devices are refused (fail closed).
 */
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
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#define CONTROL_TOPIC "$CONTROL/fleet/v1"
#define STATS_TOPIC "$fleet/v1/stats"
#define STATS_PAYLOAD 1024
#define DEFAULT_SIDECAR_CN "fleet:sidecar"
#define DEFAULT_ACL_TEMPLATE "devices/%u/#"
#define MAX_DEVICE_ID 64
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

struct fleet {
	mosquitto_plugin_id_t *id;
	X509_NAME *ca_name;
	ASN1_OCTET_STRING *ca_skid; /* NULL when the CA has no SKI */
	char *snapshot_path;
	char *sidecar_cn;
	unsigned char sidecar_pin[32];
	bool has_pin;
	char acl_before[MAX_TEMPLATE];
	char acl_after[MAX_TEMPLATE];
	long max_staleness; /* seconds; 0 = no staleness policy */
	bool loaded;        /* one snapshot loaded completely */
	time_t fresh_at;    /* when revocation data was last known current */
	long long seq;      /* highest feed sequence applied */
	struct table serials;   /* revoked serials */
	struct table devices;   /* revoked device ids */
	struct table connected; /* device id -> serial it authenticated with */
	unsigned long accepted, refused, kicked;
};

/* Refusal reasons, as logged and counted (same codes as broker_plugins.decision). */
static const char *const refusal_reasons[] = {
	"no_certificate", "unknown_issuer", "bad_device_id", "client_id_mismatch",
	"revoked", "stale_revocation_data", "sidecar_pin_mismatch", "internal_error",
};
#define N_REASONS (sizeof(refusal_reasons) / sizeof(refusal_reasons[0]))
static unsigned long refused_by_reason[N_REASONS];

static void count_refusal(const char *reason)
{
	size_t i;

	for(i = 0; i < N_REASONS; i++){
		if(!strcmp(reason, refusal_reasons[i])){
			refused_by_reason[i]++;
			return;
		}
	}
	refused_by_reason[N_REASONS - 1]++; /* unknown code: count as internal_error */
}

static bool valid_device_id(const char *s, size_t len)
{
	size_t i;

	if(len == 0 || len > MAX_DEVICE_ID) return false;
	for(i = 0; i < len; i++){
		unsigned char c = (unsigned char)s[i];
		if(!(isascii(c) && (isalnum(c) || c == '.' || c == '_' || c == '-'))) return false;
	}
	return true;
}

/* Same list as fleet.pki.device_id.RESERVED_DEVICE_IDS, compared case-insensitively. */
static bool reserved_device_id(const char *s)
{
	static const char *const reserved[] = {
		"admin", "administrator", "root", "fleet", "broker", "sidecar", "system",
		"mosquitto", "anonymous", "$sys", "localhost", "server", "ca", ".", "..",
	};
	size_t i;

	for(i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++){
		if(!strcasecmp(s, reserved[i])) return true;
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

static void refuse_log(struct fleet *f, const char *device, size_t device_len,
		const char *serial, const char *reason)
{
	char safe[LOG_FIELD];

	f->refused++;
	count_refusal(reason);
	log_safe(safe, sizeof(safe), device ? device : "-", device ? device_len : 1);
	mosquitto_log_printf(MOSQ_LOG_NOTICE,
			"fleet: refused connection: device=%s serial=%s reason=%s",
			safe, serial ? serial : "-", reason);
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

static bool issued_by_fleet_ca(const struct fleet *f, X509 *cert)
{
	const ASN1_OCTET_STRING *akid;

	if(X509_NAME_cmp(X509_get_issuer_name(cert), f->ca_name) != 0) return false;
	if(f->ca_skid == NULL) return true;
	akid = X509_get0_authority_key_id(cert);
	return akid != NULL && ASN1_OCTET_STRING_cmp(akid, f->ca_skid) == 0;
}

/* The one CN of the subject: 0 with out and len set, -1 if none or several. */
static int single_cn(X509 *cert, const char **out, size_t *len)
{
	X509_NAME *name = X509_get_subject_name(cert);
	int idx = X509_NAME_get_index_by_NID(name, NID_commonName, -1);
	const ASN1_STRING *data;
	int n;

	if(idx < 0) return -1;
	if(X509_NAME_get_index_by_NID(name, NID_commonName, idx) >= 0) return -1;
	data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
	if(!data) return -1;
	n = ASN1_STRING_length(data);
	if(n <= 0) return -1;
	*out = (const char *)ASN1_STRING_get0_data(data);
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

static bool stale(const struct fleet *f)
{
	return f->max_staleness > 0 && time(NULL) - f->fresh_at > f->max_staleness;
}

/* ------------------------------------------------------------------ */

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct fleet *f = userdata;
	struct mosquitto_evt_basic_auth *ed = event_data;
	X509 *cert;
	char *serial = NULL;
	const char *cn = NULL, *client_id;
	size_t cn_len = 0;
	char device[MAX_DEVICE_ID + 1];
	int rc = MOSQ_ERR_AUTH;

	(void)event;
	cert = mosquitto_client_certificate(ed->client);
	if(!cert){
		refuse_log(f, NULL, 0, NULL, "no_certificate");
		return MOSQ_ERR_AUTH;
	}
	serial = serial_hex(cert);
	if(!serial){
		refuse_log(f, NULL, 0, NULL, "internal_error");
		goto out;
	}
	if(single_cn(cert, &cn, &cn_len) != 0){
		refuse_log(f, NULL, 0, serial, "bad_device_id");
		goto out;
	}
	if(!issued_by_fleet_ca(f, cert)){
		refuse_log(f, cn, cn_len, serial, "unknown_issuer");
		goto out;
	}
	client_id = mosquitto_client_id(ed->client);

	if(cn_len == strlen(f->sidecar_cn) && !memcmp(cn, f->sidecar_cn, cn_len)){
		if(!matches_pin(f, cert)){
			refuse_log(f, cn, cn_len, serial, "sidecar_pin_mismatch");
		}else if(!client_id || strcmp(client_id, f->sidecar_cn)){
			refuse_log(f, cn, cn_len, serial, "client_id_mismatch");
		}else if(mosquitto_set_username(ed->client, f->sidecar_cn) != MOSQ_ERR_SUCCESS){
			refuse_log(f, cn, cn_len, serial, "internal_error");
		}else{
			mosquitto_log_printf(MOSQ_LOG_INFO, "fleet: sidecar connected (serial=%s)", serial);
			rc = MOSQ_ERR_SUCCESS;
		}
		goto out;
	}

	if(!valid_device_id(cn, cn_len)){
		refuse_log(f, cn, cn_len, serial, "bad_device_id");
		goto out;
	}
	memcpy(device, cn, cn_len);
	device[cn_len] = '\0';
	if(reserved_device_id(device)){
		refuse_log(f, device, cn_len, serial, "bad_device_id");
		goto out;
	}
	if(table_find(&f->serials, serial) || table_find(&f->devices, device)){
		refuse_log(f, device, cn_len, serial, "revoked");
		goto out;
	}
	if(!f->loaded || stale(f)){
		refuse_log(f, device, cn_len, serial, "stale_revocation_data");
		goto out;
	}
	if(!client_id || strcmp(client_id, device)){
		char safe[LOG_FIELD];
		log_safe(safe, sizeof(safe), client_id ? client_id : "-", client_id ? strlen(client_id) : 1);
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "fleet: client id was %s", safe);
		refuse_log(f, device, cn_len, serial, "client_id_mismatch");
		goto out;
	}
	if(mosquitto_set_username(ed->client, device) != MOSQ_ERR_SUCCESS
			|| table_put(&f->connected, device, serial) != 0){
		refuse_log(f, device, cn_len, serial, "internal_error");
		goto out;
	}
	f->accepted++;
	rc = MOSQ_ERR_SUCCESS;
out:
	OPENSSL_free(serial);
	X509_free(cert);
	return rc;
}

/* Whether topic (or a subscription filter) lies in the device's own tree. */
static bool in_device_tree(const struct fleet *f, const char *username, const char *topic)
{
	char base[2 * MAX_TEMPLATE + MAX_DEVICE_ID + 1];
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

	n = snprintf(buf, sizeof(buf),
			"{\"accepted\":%lu,\"refused\":%lu,\"kicked\":%lu,\"seq\":%lld,"
			"\"loaded\":%s,\"stale\":%s,\"fresh_age\":%lld,\"refused_by_reason\":{",
			f->accepted, f->refused, f->kicked, f->seq,
			f->loaded ? "true" : "false", stale(f) ? "true" : "false",
			(long long)(time(NULL) - f->fresh_at));
	if(n < 0 || (size_t)n >= sizeof(buf)) return -1;
	used = (size_t)n;
	for(i = 0; i < N_REASONS; i++){
		n = snprintf(buf + used, sizeof(buf) - used, "%s\"%s\":%lu",
				i ? "," : "", refusal_reasons[i], refused_by_reason[i]);
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
		if(load_snapshot(f)) return -1;
		f->fresh_at = time(NULL);
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
			mosquitto_log_printf(MOSQ_LOG_NOTICE, "fleet: revoked device=%s seq=%lld: session closed",
					device, seq);
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

static int on_reload(int event, void *event_data, void *userdata)
{
	struct fleet *f = userdata;

	(void)event;
	(void)event_data;
	if(load_snapshot(f) == 0) kick_revoked_sessions(f);
	return MOSQ_ERR_PLUGIN_DEFER; /* let other plugins see the reload too */
}

/* ------------------------------------------------------------------ */

static int load_issuing_ca(struct fleet *f, const char *path)
{
	FILE *fp = fopen(path, "r");
	X509 *ca;
	const ASN1_OCTET_STRING *skid;

	if(!fp){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: cannot open issuing_ca %s: %s", path, strerror(errno));
		return -1;
	}
	ca = PEM_read_X509(fp, NULL, NULL, NULL);
	fclose(fp);
	if(!ca){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: issuing_ca %s holds no PEM certificate", path);
		return -1;
	}
	f->ca_name = X509_NAME_dup(X509_get_subject_name(ca));
	skid = X509_get0_subject_key_id(ca);
	if(skid) f->ca_skid = ASN1_OCTET_STRING_dup(skid);
	X509_free(ca);
	if(!f->ca_name || (skid && !f->ca_skid)) return -1;
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
	if(!f) return;
	X509_NAME_free(f->ca_name);
	ASN1_OCTET_STRING_free(f->ca_skid);
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

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *opts, int opt_count)
{
	struct fleet *f = calloc(1, sizeof(*f));
	const char *issuing_ca = NULL, *template = DEFAULT_ACL_TEMPLATE, *sidecar_cn = DEFAULT_SIDECAR_CN;
	int i;

	if(!f) return MOSQ_ERR_NOMEM;
	f->id = identifier;
	if(table_init(&f->serials, 1024) || table_init(&f->devices, 256) || table_init(&f->connected, 1024)){
		fleet_free(f);
		return MOSQ_ERR_NOMEM;
	}
	for(i = 0; i < opt_count; i++){
		const char *key = opts[i].key, *value = opts[i].value;
		if(!key || !value) continue;
		if(!strcmp(key, "issuing_ca")){
			issuing_ca = value;
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
			char *endp;
			errno = 0;
			f->max_staleness = strtol(value, &endp, 10);
			if(errno || *endp || f->max_staleness < 0){
				mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: max_staleness_seconds must be >= 0");
				goto fail;
			}
		}else{
			mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: unknown plugin option %s", key);
			goto fail;
		}
	}
	if(!issuing_ca || !f->snapshot_path){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: plugin_opt_issuing_ca and plugin_opt_snapshot_file are required");
		goto fail;
	}
	if(!sidecar_cn[0] || strlen(sidecar_cn) > MAX_DEVICE_ID + 16
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
	if(load_issuing_ca(f, issuing_ca)) goto fail;
	if(load_snapshot(f)){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"fleet: no revocation snapshot: devices are refused until the sidecar syncs");
	}
	if(mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, f)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, f)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_CONTROL, on_control, CONTROL_TOPIC, f)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, on_reload, NULL, f)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: cannot register callbacks");
		goto fail;
	}
	*userdata = f;
	mosquitto_log_printf(MOSQ_LOG_INFO, "fleet: plugin ready (sidecar %s%s, staleness limit %lds)",
			f->sidecar_cn, f->has_pin ? ", pinned" : "", f->max_staleness);
	return MOSQ_ERR_SUCCESS;
fail:
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
	fleet_free(f);
	return MOSQ_ERR_SUCCESS;
}
