/*
 * admission.c - MOSQ_EVT_BASIC_AUTH: who may connect.
 *
 * Runs with `require_certificate true` and WITHOUT `use_identity_as_username`
 * (with it Mosquitto skips MOSQ_EVT_BASIC_AUTH, so no plugin could refuse a
 * certificate-authenticated client at connect).
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
 * (the process-wide "ssl_client" verify parameters get X509_V_FLAG_NO_CHECK_TIME,
 * see trust.c; chain, signatures, purpose and crlfile are still checked by TLS,
 * and Mosquitto's own TLS client - bridges - keeps checking server certificates'
 * times). The sidecar validates a CRL's dates before installing it.
 */
#include "fleet_plugin.h"

#include <string.h>

#include <openssl/crypto.h>

#define PEER_SEPARATOR '@' /* <sidecar_cn>@<node>: a peer node's sidecar */

bool is_sidecar(const struct fleet *f, const char *username)
{
	return username != NULL && !strcmp(username, f->sidecar_cn);
}

/*
 * A peer node's sidecar: the sidecar certificate with client id
 * <sidecar_cn>@<node name in the device id alphabet>. A client id of its own,
 * so that it never takes over this node's sidecar session.
 */
static bool is_peer_client_id(const struct fleet *f, const char *client_id)
{
	size_t n = strlen(f->sidecar_cn);

	return client_id != NULL && !strncmp(client_id, f->sidecar_cn, n)
		&& client_id[n] == PEER_SEPARATOR && valid_device_id(client_id + n + 1, strlen(client_id + n + 1));
}

int on_basic_auth(int event, void *event_data, void *userdata)
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
		}else if(!client_id || (strcmp(client_id, f->sidecar_cn) && !is_peer_client_id(f, client_id))){
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
	if(!recheck){
		f->accepted++;
		note_admission(f, device);
	}
	rc = MOSQ_ERR_SUCCESS;
out:
	OPENSSL_free(cn_utf8);
	OPENSSL_free(serial);
	X509_free(cert);
	return rc;
}
