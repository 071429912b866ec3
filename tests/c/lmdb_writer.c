/* The call-site test's LMDB writer: N records put through a write-mapped
 * environment (MDB_WRITEMAP: LMDB stores into the shared mapping of
 * data.mdb itself), committed, then a pause as in stacks.c.
 * Usage: lmdb_writer DIR RECORDS PAUSE_MS. */
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void check(int rc, const char *what) {
    if (rc != 0) {
        fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
        exit(1);
    }
}

__attribute__((noinline)) void put_records(MDB_env *env, long records) {
    MDB_txn *txn;
    MDB_dbi dbi;
    char key[32], value[512];
    check(mdb_txn_begin(env, NULL, 0, &txn), "mdb_txn_begin");
    check(mdb_dbi_open(txn, NULL, 0, &dbi), "mdb_dbi_open");
    memset(value, 'v', sizeof value);
    for (long i = 0; i < records; i++) {
        snprintf(key, sizeof key, "key-%08ld", i);
        MDB_val k = {strlen(key), key}, v = {sizeof value, value};
        check(mdb_put(txn, dbi, &k, &v, 0), "mdb_put");
    }
    check(mdb_txn_commit(txn), "mdb_txn_commit");
}

int main(int argc, char **argv) {
    if (argc < 4)
        return 2;
    MDB_env *env;
    check(mdb_env_create(&env), "mdb_env_create");
    check(mdb_env_set_mapsize(env, 64 << 20), "mdb_env_set_mapsize");
    check(mdb_env_open(env, argv[1], MDB_WRITEMAP, 0600), "mdb_env_open");
    put_records(env, atol(argv[2]));
    usleep(atol(argv[3]) * 1000);
    mdb_env_close(env);
    return 0;
}
