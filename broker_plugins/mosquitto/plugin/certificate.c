/*
 * certificate.c - the checks on a client certificate, each the C twin of a
 * fleet.kernel function (named above it), answering with the kernel's reason:
 * signed by a configured issuing CA, in validity (with skew_seconds), the
 * issuing CA and its root in validity, not a CA, EKU clientAuth, an allowed
 * key; the one CN of the subject; the sidecar's pin.
 */
#include "fleet_plugin.h"

#include <string.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>

/* The configured issuing CA that signed cert (issuer name and signature), or NULL. */
X509 *fleet_issuer(const struct fleet *f, X509 *cert)
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
int validity_reason(const struct fleet *f, X509 *cert, const struct timespec *now,
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
int issuer_reason(const struct fleet *f, X509 *issuer, const struct timespec *now,
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
int client_cert_reason(X509 *cert, enum fleet_reason *reason)
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


/*
 * The one CN of the subject, as UTF-8 (whatever its ASN.1 string type: a BMPString
 * must not be read as raw bytes, or two CNs that differ for the kernel could be one
 * device here): 0 with *out (free with OPENSSL_free) and *len set; -1 if none or
 * several, or not convertible.
 */
int single_cn(X509 *cert, unsigned char **out, size_t *len)
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

bool matches_pin(const struct fleet *f, X509 *cert)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if(!f->has_pin) return true;
	if(X509_digest(cert, EVP_sha256(), md, &mdlen) != 1 || mdlen != sizeof(f->sidecar_pin)) return false;
	return CRYPTO_memcmp(md, f->sidecar_pin, sizeof(f->sidecar_pin)) == 0;
}
