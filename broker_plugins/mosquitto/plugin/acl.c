/*
 * acl.c - MOSQ_EVT_ACL_CHECK: a device may only use the topic tree of
 * `acl_template` (default devices/%u/#, %u the device id); the sidecar may only
 * publish to $CONTROL/fleet/v1 and read its own $fleet/v1/ topics.
 */
#include "fleet_plugin.h"

#include <stdio.h>
#include <string.h>

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

int on_acl_check(int event, void *event_data, void *userdata)
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
			return !strcmp(ed->topic, STATS_TOPIC) || !strcmp(ed->topic, SESSIONS_TOPIC)
				? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
		}
		return MOSQ_ERR_ACL_DENIED;
	}
	if(!valid_device_id(username, strlen(username))) return MOSQ_ERR_ACL_DENIED;
	return in_device_tree(f, username, ed->topic) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

/* "devices/%u/#" -> before "devices/", after "". Exactly one %u, ends in "/#", no other wildcard. */
int parse_template(struct fleet *f, const char *tpl)
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
