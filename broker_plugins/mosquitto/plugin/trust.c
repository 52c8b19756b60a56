/*
 * trust.c - the CAs device certificates are checked against: the issuing CAs
 * (plugin_opt_issuing_ca, several during a rotation) and the roots above them
 * (plugin_opt_root_ca), read at start and again on every reload; and the TLS
 * layer's client verification parameters (validity is left to the plugin).
 */
#include "fleet_plugin.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509_vfy.h>
#include <openssl/x509v3.h>

static int certs_add(struct certs *c, X509 *cert)
{
	X509 **items = realloc(c->items, (c->count + 1) * sizeof(*items));

	if(!items) return -1;
	c->items = items;
	c->items[c->count++] = cert;
	return 0;
}

void certs_free(struct certs *c)
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
int load_ca_file(struct certs *issuers, struct certs *anchors, const char *option,
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

int settle_trust(struct fleet *f, struct certs *issuing_roots)
{
	return settle(&f->issuers, &f->anchors, issuing_roots);
}

int remember_path(char **paths, size_t *n, const char *option, const char *value)
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
void reload_trust(struct fleet *f)
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
int leave_client_times_to_plugin(void)
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
