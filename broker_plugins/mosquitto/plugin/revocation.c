/*
 * revocation.c - the revocation state: revoked serials and devices, how fresh
 * they are (max_staleness_seconds), and closing the sessions they revoke.
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
#include "fleet_plugin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNAPSHOT_LINE 256

long long revocation_age(const struct fleet *f)
{
	return (long long)(time(NULL) - f->fresh_at);
}

bool stale(const struct fleet *f)
{
	return !f->loaded || (f->max_staleness > 0 && revocation_age(f) > f->max_staleness);
}

/* Log when the revocation state becomes stale and when it is fresh again. */
void note_staleness(struct fleet *f)
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

/*
 * Close the live session of one device. By client id, not by username: the
 * two are equal for every admitted device (step 7 in admission.c), and Mosquitto 2.0's
 * mosquitto_kick_client_by_username walks every connected client (HASH_ITER
 * over contexts_by_sock), while mosquitto_kick_client_by_clientid is one hash
 * lookup - a kick's cost must not grow with the number of devices connected.
 * The Will is never sent: a revoked device's last words are not trusted.
 * False when this broker holds no session of the device (it is on another node,
 * or not connected): nothing was closed, and the log must not say otherwise.
 */
bool kick_session(struct fleet *f, const char *device)
{
	if(mosquitto_kick_client_by_clientid(device, false) != MOSQ_ERR_SUCCESS) return false;
	f->kicked++;
	return true;
}

/* Kick every recorded session whose device or serial is revoked. */
void kick_revoked_sessions(struct fleet *f)
{
	size_t i;
	struct entry *e;

	for(i = 0; i < f->connected.nbuckets; i++){
		for(e = f->connected.buckets[i]; e; e = e->next){
			if(table_find(&f->devices, e->key) || (e->value && table_find(&f->serials, e->value))){
				kick_session(f, e->key);
			}
		}
	}
}

/* Read the snapshot file into the tables (union). 0 when complete. */
int load_snapshot(struct fleet *f)
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
