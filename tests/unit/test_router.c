/* Routing rule of DESIGN §3 against vectors a Python one-liner reproduces:
 * python3 -c "import hashlib;print(int.from_bytes(hashlib.sha256(b'turnout:eval_1').digest()[:8],'big')%10000)" */
#include "router.h"
#include "unit.h"

#include <stdio.h>

static void test_bucket_vectors(void)
{
    CHECK_EQ_INT(route_bucket("turnout", "eval_1", 6), 9716);
    CHECK_EQ_INT(route_bucket("turnout", "user-42", 7), 6043);
    CHECK_EQ_INT(route_bucket("s", "", 0), 2920);
    CHECK_EQ_INT(route_bucket("turnout", "eval_20261123_010203_deadbeef", 29), 2175);
    CHECK_EQ_INT(route_bucket("xxxxxxxxxx", "k:y", 3), 7667);
}

static void test_precedence(void)
{
    route_state st = {.force_legacy = true, .enabled = true, .percentage = 1, .sticky = true, .salt = "turnout"};
    route_decision d = route_decide(&st, "eval_1", 6);
    CHECK_EQ_INT(d.path, PATH_LEGACY);
    CHECK_EQ_INT(d.reason, REASON_FORCED);
    st.force_legacy = false;
    st.enabled = false;
    d = route_decide(&st, "eval_1", 6);
    CHECK_EQ_INT(d.path, PATH_LEGACY);
    CHECK_EQ_INT(d.reason, REASON_DISABLED);
    st.enabled = true;
    d = route_decide(&st, "eval_1", 6);
    CHECK_EQ_INT(d.path, PATH_NEW);
    CHECK_EQ_INT(d.reason, REASON_PERCENTAGE);
    CHECK_EQ_INT(d.bucket, 9716);
}

static void test_threshold_edges(void)
{
    route_state st = {.enabled = true, .sticky = true, .salt = "turnout"};
    /* bucket 9716: new exactly when round(p*10000) > 9716 */
    st.percentage = 0.9716;
    CHECK_EQ_INT(route_decide(&st, "eval_1", 6).path, PATH_LEGACY);
    st.percentage = 0.9717;
    CHECK_EQ_INT(route_decide(&st, "eval_1", 6).path, PATH_NEW);
    st.percentage = 0;
    CHECK_EQ_INT(route_decide(&st, "s", 1).path, PATH_LEGACY);
    /* bucket 2175 < round(0.30 * 10000) */
    st.percentage = 0.30;
    CHECK_EQ_INT(route_decide(&st, "eval_20261123_010203_deadbeef", 29).path, PATH_NEW);
}

static void test_monotonic_raise(void)
{
    /* Raising the percentage only ever moves keys from legacy to new. */
    route_state st = {.enabled = true, .sticky = true, .salt = "turnout"};
    char key[32];
    int moved_back = 0;
    for (int i = 0; i < 2000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        st.percentage = 0.2;
        enum route_path before = route_decide(&st, key, strlen(key)).path;
        st.percentage = 0.6;
        enum route_path after = route_decide(&st, key, strlen(key)).path;
        if (before == PATH_NEW && after != PATH_NEW) moved_back++;
    }
    CHECK_EQ_INT(moved_back, 0);
}

static void test_random_share(void)
{
    CHECK_EQ_INT(route_seed(), 0);
    route_state st = {.enabled = true, .sticky = false, .percentage = 0.3, .salt = "turnout"};
    int n_new = 0;
    for (int i = 0; i < 100000; i++) n_new += route_decide(&st, "same", 4).path == PATH_NEW;
    /* binomial sd ~ 145: 5 sd either side */
    CHECK(n_new > 30000 - 725 && n_new < 30000 + 725);
}

int main(void)
{
    RUN(test_bucket_vectors);
    RUN(test_precedence);
    RUN(test_threshold_edges);
    RUN(test_monotonic_raise);
    RUN(test_random_share);
    UNIT_END();
}
