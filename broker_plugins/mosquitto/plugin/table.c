/*
 * table.c - a small string-keyed hash table (chained, FNV-1a), optional value:
 * revoked serials and devices, and the sessions admitted here.
 */
#include "fleet_plugin.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_str(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	while(*s){
		h ^= (unsigned char)*s++;
		h *= 1099511628211ULL;
	}
	return h;
}

int table_init(struct table *t, size_t nbuckets)
{
	t->buckets = calloc(nbuckets, sizeof(*t->buckets));
	if(!t->buckets) return -1;
	t->nbuckets = nbuckets;
	t->count = 0;
	return 0;
}

void table_free(struct table *t)
{
	size_t i;
	struct entry *e, *next;

	if(!t->buckets) return;
	for(i = 0; i < t->nbuckets; i++){
		for(e = t->buckets[i]; e; e = next){
			next = e->next;
			free(e->value);
			free(e);
		}
	}
	free(t->buckets);
	t->buckets = NULL;
	t->nbuckets = 0;
	t->count = 0;
}

struct entry *table_find(const struct table *t, const char *key)
{
	struct entry *e;

	for(e = t->buckets[hash_str(key) % t->nbuckets]; e; e = e->next){
		if(!strcmp(e->key, key)) return e;
	}
	return NULL;
}

static void table_grow(struct table *t)
{
	size_t i, n = t->nbuckets * 2;
	struct entry **b, *e, *next;

	if(n < t->nbuckets) return;
	b = calloc(n, sizeof(*b));
	if(!b) return; /* keep the old, slower table */
	for(i = 0; i < t->nbuckets; i++){
		for(e = t->buckets[i]; e; e = next){
			size_t slot = hash_str(e->key) % n;
			next = e->next;
			e->next = b[slot];
			b[slot] = e;
		}
	}
	free(t->buckets);
	t->buckets = b;
	t->nbuckets = n;
}

/* Insert key (or replace its value). 0 on success, -1 when out of memory. */
int table_put(struct table *t, const char *key, const char *value)
{
	struct entry *e = table_find(t, key);
	char *copy = NULL;
	size_t len, slot;

	if(value){
		copy = strdup(value);
		if(!copy) return -1;
	}
	if(e){
		free(e->value);
		e->value = copy;
		return 0;
	}
	len = strlen(key);
	e = malloc(sizeof(*e) + len + 1);
	if(!e){
		free(copy);
		return -1;
	}
	memcpy(e->key, key, len + 1);
	e->value = copy;
	slot = hash_str(key) % t->nbuckets;
	e->next = t->buckets[slot];
	t->buckets[slot] = e;
	t->count++;
	if(t->count > t->nbuckets * 2) table_grow(t);
	return 0;
}
