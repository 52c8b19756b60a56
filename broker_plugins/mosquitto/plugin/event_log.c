/*
 * event_log.c - the plugin's event lines: refusals, kicks and takeovers, as
 * text or (plugin_opt_log_format json) as JSON objects like fleet's other
 * logs. Untrusted text (a certificate's CN, a client id) is cleaned first.
 */
#include "fleet_plugin.h"

#include <stdio.h>

/* Copy untrusted text into out for logging: printable ASCII kept, the rest as '?'. */
void log_safe(char *out, size_t outlen, const char *in, size_t inlen)
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
void event_log(const struct fleet *f, int level, const char *event, const char *message,
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

void refuse_log(struct fleet *f, const char *device, size_t device_len,
		const char *serial, enum fleet_reason reason)
{
	if((unsigned)reason >= FLEET_N_REASONS) reason = FLEET_R_INTERNAL_ERROR;
	f->refused++;
	f->refused_by_reason[reason]++;
	event_log(f, MOSQ_LOG_NOTICE, "connection_refused", "refused connection",
			device, device_len, serial, fleet_reason_codes[reason]);
}
