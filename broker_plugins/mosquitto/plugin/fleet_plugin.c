/*
 * fleet_plugin.c - Mosquitto 2.0 plugin (API v5) enforcing fleet device certificates:
 * its entry points (options, callback registration, cleanup) and the reload
 * and tick callbacks. The other units are listed in fleet_plugin.h; who may
 * connect is decided in admission.c.
 *
 * Every trust constant (device id alphabet and length, reserved ids, allowed
 * key types, default skew, reason codes) comes from fleet_kernel.h, generated
 * from fleet/kernel/ by `python -m fleet.kernel.cheader`: none is written in
 * the plugin.
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
 *     snapshot_file   the revocation snapshot (revocation.c)
 *     skew_seconds    clock skew forgiven on validity (FLEET_DEFAULT_SKEW_SECONDS)
 *     max_staleness_seconds  refuse devices when the revocation state is
 *                     older than this (default 30; 0 = never, fails open)
 *     sidecar_cn, sidecar_sha256, acl_template (acl.c)
 *     announce_sessions  true: announce every device admission to the sidecar
 *                     (peer nodes; sessions.c)
 *     log_format      text (default) or json: refusals and kicks as JSON objects
 *                     ({"ts","level","logger","msg","event","device_id","serial",
 *                     "reason"}), like fleet's other logs
 */
#include "fleet_plugin.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_SIDECAR_CN "fleet:sidecar"
#define DEFAULT_ACL_TEMPLATE "devices/%u/#"
/* Not a trust rule: the broker's default when the option is absent (config.py writes it). */
#define DEFAULT_MAX_STALENESS_SECONDS 30

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
	table_free(&f->since);
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
	if(table_init(&f->serials, 1024) || table_init(&f->devices, 256) || table_init(&f->connected, 1024)
			|| table_init(&f->since, 1024)){
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
		}else if(!strcmp(key, "announce_sessions")){
			if(!strcmp(value, "true")) f->announce_sessions = true;
			else if(!strcmp(value, "false")) f->announce_sessions = false;
			else{
				mosquitto_log_printf(MOSQ_LOG_ERR, "fleet: announce_sessions must be true or false");
				goto fail;
			}
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
