/*
 * sessions.c - one session per device across broker nodes.
 *
 * With plugin_opt_announce_sessions true, every device admission is announced
 * as "<device_id> <ms>" on $fleet/v1/sessions to the sidecar only, which sends
 * it as a `session` command (control.c) to the peer nodes over their own
 * listeners (client id <sidecar_cn>@<node>, the sidecar certificate). A lost
 * announcement leaves the older session up, as a single broker without this
 * would; it never refuses a connection.
 */
#include "fleet_plugin.h"

#include <stdio.h>
#include <string.h>

static long long now_ms(void)
{
	struct timespec ts;

	if(clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * Remember when the device was admitted here and, for the peer nodes, tell
 * the sidecar. Best effort: a lost announcement only leaves an older session up.
 */
void note_admission(struct fleet *f, const char *device)
{
	char text[FLEET_MAX_DEVICE_ID + 32];
	long long ms = now_ms();
	int n;

	if(ms < 0) return;
	n = snprintf(text, sizeof(text), "%lld", ms);
	if(n < 0 || (size_t)n >= sizeof(text) || table_put(&f->since, device, text)) return;
	if(!f->announce_sessions) return;
	n = snprintf(text, sizeof(text), "%s %lld", device, ms);
	if(n < 0 || (size_t)n >= sizeof(text)) return;
	if(mosquitto_broker_publish_copy(f->sidecar_cn, SESSIONS_TOPIC, n, text, 0, false, NULL)
			!= MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "fleet: session announcement of %s not sent", device);
	}
}

/*
 * The device was admitted on another broker node at theirs (Unix ms): close
 * its session here if that one is older, and count the takeover.
 */
void close_older_session(struct fleet *f, const char *device, long long theirs)
{
	const struct entry *e = table_find(&f->since, device);
	long long ours;

	/* Only an older session goes: an announcement that arrives late (a device
	 * that came back here since) must not close the newest one. */
	if(!e || parse_seq(e->value, &ours) || ours >= theirs) return;
	if(mosquitto_kick_client_by_clientid(device, false) == MOSQ_ERR_SUCCESS){
		const struct entry *c = table_find(&f->connected, device);
		f->taken_over++;
		event_log(f, MOSQ_LOG_NOTICE, "session_taken_over",
				"connected on another broker node: older session closed",
				device, strlen(device), c ? c->value : NULL, NULL);
	}
}
