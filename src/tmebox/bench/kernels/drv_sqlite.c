/* SQLite: an in-memory database (`:memory:`), a generated table, an index and
 * a few queries (aggregate, group by, order by, join), rebuilt on every run. */
#include <stdint.h>
#include <stdio.h>
#include "sqlite3.h"

static sqlite3 *db;
static long rows;
static uint64_t h;

static int fold(void *unused, int ncol, char **vals, char **names)
{
    (void)unused;
    (void)names;
    for (int i = 0; i < ncol; i++)
        for (const char *p = vals[i] ? vals[i] : "~"; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ULL;
    return 0;
}

int workload_init(long scale)
{
    if (sqlite3_open(":memory:", &db) != SQLITE_OK)
        return -1;
    rows = scale * 2000;
    return 0;
}

static int exec(const char *sql)
{
    return sqlite3_exec(db, sql, fold, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

unsigned long long workload_run(void)
{
    sqlite3_stmt *ins;
    h = 14695981039346656037ULL;
    if (exec("CREATE TABLE t(id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL);"
             "CREATE TABLE u(k INTEGER PRIMARY KEY, name TEXT);"
             "BEGIN;") != 0)
        return 0;
    if (sqlite3_prepare_v2(db, "INSERT INTO t(a, b, c) VALUES(?, ?, ?)", -1, &ins, NULL) !=
        SQLITE_OK)
        return 0;
    uint64_t x = 88172645463325252ULL;
    for (long i = 0; i < rows; i++) {
        char text[32];
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        snprintf(text, sizeof text, "name-%llu", (unsigned long long)(x % 5003));
        sqlite3_bind_int64(ins, 1, (sqlite3_int64)(x % 100000));
        sqlite3_bind_text(ins, 2, text, -1, SQLITE_TRANSIENT);
        sqlite3_bind_double(ins, 3, (double)(x % 1000) / 8.0);
        if (sqlite3_step(ins) != SQLITE_DONE)
            return 0;
        sqlite3_reset(ins);
    }
    sqlite3_finalize(ins);
    if (exec("INSERT INTO u(k, name) SELECT value, 'n' || value FROM "
             "(WITH RECURSIVE s(value) AS (SELECT 0 UNION ALL SELECT value + 1 FROM s "
             "WHERE value < 999) SELECT value FROM s);"
             "COMMIT;"
             "SELECT count(*), sum(a), total(c) FROM t WHERE a % 7 = 3;"
             "SELECT b, count(*), max(a) FROM t GROUP BY b ORDER BY 2 DESC, 1 LIMIT 20;"
             "CREATE INDEX t_a ON t(a);"
             "SELECT id, a FROM t WHERE a BETWEEN 40000 AND 40500 ORDER BY a, id;"
             "SELECT u.name, count(*) FROM t JOIN u ON u.k = t.a % 1000 "
             "GROUP BY u.k ORDER BY 2 DESC, 1 LIMIT 10;"
             "SELECT substr(b, 6) || '-' || printf('%.3f', avg(c)) FROM t GROUP BY b "
             "HAVING count(*) > 2 ORDER BY 1 LIMIT 50;"
             "DROP TABLE t; DROP TABLE u;") != 0)
        return 0;
    return h;
}
