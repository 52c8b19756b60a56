/*
 * identifiers.c - device ids and certificate serials as text: the device id
 * rule of fleet.kernel.device_id (its constants from fleet_kernel.h) and the
 * canonical serial form the snapshot, the control channel and the tables use;
 * and the non-negative decimals beside them (feed sequence numbers, Unix ms).
 */
#include "fleet_plugin.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/crypto.h>

/* The device id rule's alphabet and length (fleet.kernel.device_id); no reserved check. */
bool valid_device_id(const char *s, size_t len)
{
	size_t i;

	if(len == 0 || len > FLEET_MAX_DEVICE_ID) return false;
	for(i = 0; i < len; i++){
		unsigned char c = (unsigned char)s[i];
		if(!isascii(c)) return false;
		if(isalnum(c)) continue;
		if(c == '\0' || !strchr(FLEET_DEVICE_ID_PUNCTUATION, c)) return false;
	}
	return true;
}

bool reserved_device_id(const char *s)
{
	size_t i;

	for(i = 0; i < FLEET_N_RESERVED_IDS; i++){
		if(!strcasecmp(s, fleet_reserved_ids[i])) return true;
	}
	return false;
}

/* Canonical serial: lowercase hex, no leading zeros ("0" for zero). */
bool valid_serial_hex(const char *s)
{
	size_t i, len = strlen(s);

	if(len == 0 || len > MAX_SERIAL_HEX) return false;
	if(len > 1 && s[0] == '0') return false;
	for(i = 0; i < len; i++){
		if(!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
	}
	return true;
}

/* The certificate serial as canonical hex; caller frees with OPENSSL_free. */
char *serial_hex(X509 *cert)
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

/* A non-negative decimal (a feed sequence number, Unix milliseconds). 0 on success. */
int parse_seq(const char *text, long long *out)
{
	char *endp;

	if(!text) return -1;
	errno = 0;
	*out = strtoll(text, &endp, 10);
	return (errno || *endp || *out < 0) ? -1 : 0;
}
