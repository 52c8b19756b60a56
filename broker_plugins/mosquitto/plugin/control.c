/*
 * control.c - MOSQ_EVT_CONTROL on $CONTROL/fleet/v1.
 *
 * Accepted only from the sidecar identity (a certificate of the issuing CA
 * whose CN is `sidecar_cn`, a name no device id can take because ':' is
 * outside the device id alphabet, optionally pinned by SHA-256). One command
 * per line:
 *     revoke <seq> device <device_id> [<serial_hex> ...]
 *     revoke <seq> certificate <device_id> <serial_hex> [<serial_hex> ...]
 *     reload              re-read the snapshot file, kick revoked sessions
 *     heartbeat <seq>     the sidecar's feed is live (staleness policy)
 *     stats               publish the counters (JSON) to $fleet/v1/stats, to
 *                         the sidecar only (it alone may subscribe there)
 *     session <device_id> <ms>
 *                         the device was admitted on another broker node at
 *                         <ms> (Unix milliseconds): close its session here if
 *                         it is older (MQTT: one session per client id; the
 *                         newest wins; sessions.c). The only command a peer
 *                         link may send.
 */
#include "fleet_plugin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STATS_PAYLOAD 2048
#define MAX_CONTROL_PAYLOAD (4u * 1024u * 1024u)

/* Publish the counters as one JSON object to the sidecar only. 0 on success. */
static int publish_stats(struct fleet *f)
{
	char buf[STATS_PAYLOAD];
	size_t used = 0, i;
	int n;

	note_staleness(f);
	n = snprintf(buf, sizeof(buf),
			"{\"accepted\":%lu,\"refused\":%lu,\"kicked\":%lu,\"taken_over\":%lu,\"seq\":%lld,"
			"\"loaded\":%s,\"stale\":%s,\"fresh_age\":%lld,\"max_staleness\":%ld,"
			"\"refused_by_reason\":{",
			f->accepted, f->refused, f->kicked, f->taken_over, f->seq,
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

/* `session <device> <ms>` from a peer node: close an older session here. 0 on success. */
static int session_elsewhere(struct fleet *f, char **save)
{
	const char *device = strtok_r(NULL, " ", save);
	long long theirs;

	if(!device || !valid_device_id(device, strlen(device))
			|| parse_seq(strtok_r(NULL, " ", save), &theirs) || strtok_r(NULL, " ", save)){
		return -1;
	}
	close_older_session(f, device, theirs);
	return 0;
}

/* One control line, NUL-terminated and modifiable; a peer may only send `session`. 0 on success. */
static int control_line(struct fleet *f, char *line, bool peer)
{
	char *save = NULL;
	char *cmd = strtok_r(line, " ", &save);
	long long seq;

	if(!cmd) return 0; /* blank line */
	if(!strcmp(cmd, "session")) return session_elsewhere(f, &save);
	if(peer) return -1;
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
		if(kick && kick_session(f, device)){
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

int on_control(int event, void *event_data, void *userdata)
{
	struct fleet *f = userdata;
	struct mosquitto_evt_control *ed = event_data;
	const char *username = mosquitto_client_username(ed->client);
	const char *client_id = mosquitto_client_id(ed->client);
	bool peer = !client_id || strcmp(client_id, f->sidecar_cn) != 0;
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
		if(control_line(f, line, peer)){
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
