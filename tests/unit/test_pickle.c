/* pickle: the writer round-trips through the reader; the reader takes the
 * exact bytes Python 3.11 writes for RQ's values, every accepted opcode
 * written by hand, and refuses every opcode that imports, calls or builds,
 * recursive structures, and broken or oversized input.
 *
 * Two more modes, for tests/interop/test_pickle_python.py (real Python on
 * the other side):
 *   PICKLE_DUMP_DIR=dir   also writes dir/<name>.pickle, made by
 *                         pickle_dumps / pickle_dumps_tuple (see dump_files);
 *   PICKLE_LOAD_FILE=path runs no test: loads that file and prints the value
 *                         as compact JSON (exit 0) or "refused: <reason>"
 *                         (exit 3). */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <jansson.h>

#include "pickle.h"
#include "unit.h"

/* A literal's bytes and length (literals may hold NUL bytes). */
#define PK(lit) (const unsigned char *)"" lit, sizeof(lit) - 1

/* A value from JSON text (\u0000 allowed); the text is the test's own. */
static json_t *J(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!v) {
        fprintf(stderr, "bad test JSON %s: %s\n", text, e.text);
        abort();
    }
    return v;
}

/* Loads buf (copied to a heap block of exactly len bytes, so that ASan sees
 * any read past it). */
static json_t *load(const unsigned char *buf, size_t len, char err[160])
{
    unsigned char *copy = malloc(len ? len : 1);
    if (len) memcpy(copy, buf, len);
    json_t *v = pickle_loads(copy, len, err);
    free(copy);
    return v;
}

static int mismatches;

/* The pickle loads to the value of the JSON text, type for type. */
static void loads_as(const unsigned char *buf, size_t len, const char *json, int line)
{
    char err[160];
    json_t *v = load(buf, len, err), *want = J(json);
    if (!v || !json_equal(v, want)) {
        mismatches++;
        char *got = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
        fprintf(stderr, "%s:%d: loads gave %s, expected %s\n", __FILE__, line, got ? got : err, json);
        free(got);
    }
    CHECK(v && json_equal(v, want));
    json_decref(v);
    json_decref(want);
}
#define LOADS_AS(lit, json) loads_as(PK(lit), (json), __LINE__)

/* The pickle is refused with a reason that contains `why`. */
static void refused(const unsigned char *buf, size_t len, const char *why, int line)
{
    char err[160];
    json_t *v = load(buf, len, err);
    if (v || !strstr(err, why)) {
        mismatches++;
        fprintf(stderr, "%s:%d: expected a refusal with \"%s\", got %s\n", __FILE__, line, why,
                v ? "a value" : err);
    }
    CHECK(!v && strstr(err, why));
    json_decref(v);
}
#define REFUSED(lit, why) refused(PK(lit), (why), __LINE__)

/* ---- Python 3.11's own bytes ----
 * Made with /usr/bin/python3 (3.11.2):  pickle.dumps(VALUE, protocol=N)
 * for N = 0, 2 and 5 (HIGHEST_PROTOCOL), printed as C literals. */

static const struct pycase {
    const char *what;
    const unsigned char *buf;
    size_t len;
    const char *json;
} pycases[] = {
    /* {"status": "completed", "output": "hi\n", "error": None, "exit_code": 0, "duration_s": 0.012} */
#define RESULT_JSON "{\"status\":\"completed\",\"output\":\"hi\\n\",\"error\":null,\"exit_code\":0,\"duration_s\":0.012}"
    {"result p0",
     PK("(dp0\nVstatus\np1\nVcompleted\np2\nsVoutput\np3\nVhi\x5cu000a\np4\nsVerror\np5\nNsVexit_code\np6\nI0\nsV"
        "duration_s\np7\nF0.012\ns."),
     RESULT_JSON},
    {"result p2",
     PK("\x80\x02}q\x00(X\x06\x00\x00\x00statusq\x01X\x09\x00\x00\x00""completedq\x02X\x06\x00\x00\x00outputq\x03X"
        "\x03\x00\x00\x00hi\nq\x04X\x05\x00\x00\x00""errorq\x05NX\x09\x00\x00\x00""exit_codeq\x06K\x00X\n\x00\x00"
        "\x00""duration_sq\x07G\x3f\x88\x93t\xbcj~\xfau."),
     RESULT_JSON},
    {"result p5",
     PK("\x80\x05\x95V\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x06status\x94\x8c\x09""completed\x94\x8c\x06output\x94"
        "\x8c\x03hi\n\x94\x8c\x05""error\x94N\x8c\x09""exit_code\x94K\x00\x8c\nduration_s\x94G\x3f\x88\x93t\xbcj~"
        "\xfau."),
     RESULT_JSON},
    /* ("tasks.evaluate_code", None, ["e1", "print(1)", "python"],
     *  {"timeout": 30, "engine": "docker", "priority": "high"}) */
#define JOB_JSON                                                                                   \
    "[\"tasks.evaluate_code\",null,[\"e1\",\"print(1)\",\"python\"],{\"timeout\":30,\"engine\":\"docker\"," \
    "\"priority\":\"high\"}]"
    {"job p0",
     PK("(Vtasks.evaluate_code\np0\nN(lp1\nVe1\np2\naVprint(1)\np3\naVpython\np4\na(dp5\nVtimeout\np6\nI30\nsV"
        "engine\np7\nVdocker\np8\nsVpriority\np9\nVhigh\np10\nstp11\n."),
     JOB_JSON},
    {"job p2",
     PK("\x80\x02(X\x13\x00\x00\x00tasks.evaluate_codeq\x00N]q\x01(X\x02\x00\x00\x00""e1q\x02X\x08\x00\x00\x00"
        "print(1)q\x03X\x06\x00\x00\x00pythonq\x04""e}q\x05(X\x07\x00\x00\x00timeoutq\x06K\x1eX\x06\x00\x00\x00"
        "engineq\x07X\x06\x00\x00\x00""dockerq\x08X\x08\x00\x00\x00priorityq\x09X\x04\x00\x00\x00highq\nutq\x0b."),
     JOB_JSON},
    {"job p5",
     PK("\x80\x05\x95l\x00\x00\x00\x00\x00\x00\x00(\x8c\x13tasks.evaluate_code\x94N]\x94(\x8c\x02""e1\x94\x8c\x08"
        "print(1)\x94\x8c\x06python\x94""e}\x94(\x8c\x07timeout\x94K\x1e\x8c\x06""engine\x94\x8c\x06""docker\x94"
        "\x8c\x08priority\x94\x8c\x04high\x94ut\x94."),
     JOB_JSON},
    /* [1, [2, (3, 4)], (), (5,), (6, 7, 8, 9), {"a": [True, False]}, [[[]]]] */
#define NESTED_JSON "[1,[2,[3,4]],[],[5],[6,7,8,9],{\"a\":[true,false]},[[[]]]]"
    {"nested p0",
     PK("(lp0\nI1\na(lp1\nI2\na(I3\nI4\ntp2\naa(ta(I5\ntp3\na(I6\nI7\nI8\nI9\ntp4\na(dp5\nVa\np6\n(lp7\nI01\naI00"
        "\nasa(lp8\n(lp9\n(lp10\naaa."),
     NESTED_JSON},
    {"nested p2",
     PK("\x80\x02]q\x00(K\x01]q\x01(K\x02K\x03K\x04\x86q\x02""e)K\x05\x85q\x03(K\x06K\x07K\x08K\x09tq\x04}q\x05X"
        "\x01\x00\x00\x00""aq\x06]q\x07(\x88\x89""es]q\x08]q\x09]q\naae."),
     NESTED_JSON},
    {"nested p5",
     PK("\x80\x05\x95""8\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01]\x94(K\x02K\x03K\x04\x86\x94""e)K\x05\x85\x94(K"
        "\x06K\x07K\x08K\x09t\x94}\x94\x8c\x01""a\x94]\x94(\x88\x89""es]\x94]\x94]\x94""aae."),
     NESTED_JSON},
    /* ["\u00e9\U0001f600\u4e2d", "a\\b\n\0c"] */
#define UNICODE_JSON "[\"\xc3\xa9\xf0\x9f\x98\x80\xe4\xb8\xad\",\"a\\\\b\\n\\u0000c\"]"
    {"unicode p0", PK("(lp0\nV\xe9\x5cU0001f600\x5cu4e2d\np1\naVa\x5cu005cb\x5cu000a\x5cu0000c\np2\na."),
     UNICODE_JSON},
    {"unicode p2",
     PK("\x80\x02]q\x00(X\x09\x00\x00\x00\xc3\xa9\xf0\x9f\x98\x80\xe4\xb8\xadq\x01X\x06\x00\x00\x00""a\x5c""b\n"
        "\x00""cq\x02""e."),
     UNICODE_JSON},
    {"unicode p5",
     PK("\x80\x05\x95\x1a\x00\x00\x00\x00\x00\x00\x00]\x94(\x8c\x09\xc3\xa9\xf0\x9f\x98\x80\xe4\xb8\xad\x94\x8c"
        "\x06""a\x5c""b\n\x00""c\x94""e."),
     UNICODE_JSON},
    /* [0, 1, -1, 255, 256, 65535, 65536, -2**31, 2**31-1, 2**31, 2**63-1, -2**63, -129] */
#define INTS_JSON                                                                                  \
    "[0,1,-1,255,256,65535,65536,-2147483648,2147483647,2147483648,9223372036854775807,"           \
    "-9223372036854775808,-129]"
    {"ints p0",
     PK("(lp0\nI0\naI1\naI-1\naI255\naI256\naI65535\naI65536\naI-2147483648\naI2147483647\naL2147483648L\naL"
        "9223372036854775807L\naL-9223372036854775808L\naI-129\na."),
     INTS_JSON},
    {"ints p2",
     PK("\x80\x02]q\x00(K\x00K\x01J\xff\xff\xff\xffK\xffM\x00\x01M\xff\xffJ\x00\x00\x01\x00J\x00\x00\x00\x80J\xff"
        "\xff\xff\x7f\x8a\x05\x00\x00\x00\x80\x00\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f\x8a\x08\x00\x00\x00\x00"
        "\x00\x00\x00\x80J\x7f\xff\xff\xff""e."),
     INTS_JSON},
    {"ints p5",
     PK("\x80\x05\x95""E\x00\x00\x00\x00\x00\x00\x00]\x94(K\x00K\x01J\xff\xff\xff\xffK\xffM\x00\x01M\xff\xffJ\x00"
        "\x00\x01\x00J\x00\x00\x00\x80J\xff\xff\xff\x7f\x8a\x05\x00\x00\x00\x80\x00\x8a\x08\xff\xff\xff\xff\xff"
        "\xff\xff\x7f\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80J\x7f\xff\xff\xff""e."),
     INTS_JSON},
    /* [0.5, -0.0, 1e100, 1e-300, 0.012] */
#define FLOATS_JSON "[0.5,-0.0,1e100,1e-300,0.012]"
    {"floats p0", PK("(lp0\nF0.5\naF-0.0\naF1e+100\naF1e-300\naF0.012\na."), FLOATS_JSON},
    {"floats p2",
     PK("\x80\x02]q\x00(G\x3f\xe0\x00\x00\x00\x00\x00\x00G\x80\x00\x00\x00\x00\x00\x00\x00GT\xb2I\xad%\x94\xc3}G"
        "\x01\xa5n\x1f\xc2\xf8\xf3YG\x3f\x88\x93t\xbcj~\xfa""e."),
     FLOATS_JSON},
    {"floats p5",
     PK("\x80\x05\x95""2\x00\x00\x00\x00\x00\x00\x00]\x94(G\x3f\xe0\x00\x00\x00\x00\x00\x00G\x80\x00\x00\x00\x00"
        "\x00\x00\x00GT\xb2I\xad%\x94\xc3}G\x01\xa5n\x1f\xc2\xf8\xf3YG\x3f\x88\x93t\xbcj~\xfa""e."),
     FLOATS_JSON},
    /* [True, False, None] */
    {"bools p0", PK("(lp0\nI01\naI00\naNa."), "[true,false,null]"},
    {"bools p2", PK("\x80\x02]q\x00(\x88\x89Ne."), "[true,false,null]"},
    {"bools p5", PK("\x80\x05\x95\x08\x00\x00\x00\x00\x00\x00\x00]\x94(\x88\x89Ne."), "[true,false,null]"},
    /* [b"raw\xc3\xa9", bytearray(b"ba")] protocol 5; b"raw\xc3\xa9" protocol 3 */
    {"bytes p5",
     PK("\x80\x05\x95\x19\x00\x00\x00\x00\x00\x00\x00]\x94(C\x05raw\xc3\xa9\x94\x96\x02\x00\x00\x00\x00\x00\x00"
        "\x00""ba\x94""e."),
     "[\"raw\xc3\xa9\",\"ba\"]"},
    {"bytes p3", PK("\x80\x03""C\x05raw\xc3\xa9q\x00."), "\"raw\xc3\xa9\""},
    /* a = [1]; [a, a, {"k": "v", "k2": "v"}] protocol 2 (shared through the memo) */
    {"shared p2",
     PK("\x80\x02]q\x00(]q\x01K\x01""ah\x01}q\x02(X\x01\x00\x00\x00kq\x03X\x01\x00\x00\x00vq\x04X\x02\x00\x00\x00"
        "k2q\x05h\x04ue."),
     "[[1],[1],{\"k\":\"v\",\"k2\":\"v\"}]"},
};
#define NPY (sizeof(pycases) / sizeof(pycases[0]))

static void test_python_bytes(void)
{
    for (size_t i = 0; i < NPY; i++) {
        unit_current = pycases[i].what;
        loads_as(pycases[i].buf, pycases[i].len, pycases[i].json, __LINE__);
    }
    unit_current = "test_python_bytes";
    /* the shared list is one value in the tree, as in Python */
    char err[160];
    const struct pycase *s = &pycases[NPY - 1];
    json_t *v = pickle_loads(s->buf, s->len, err);
    CHECK(v && json_array_get(v, 0) == json_array_get(v, 1));
    json_decref(v);
    CHECK_EQ_INT(mismatches, 0);
}

/* Python 3.11's bytes for values the reader must refuse. */
static void test_python_refusals(void)
{
    /* bytes, bytearray in protocols 0-2 / 0-4 are calls: b"ab" protocol 2 */
    REFUSED("\x80\x02""c_codecs\nencode\nq\x00X\x02\x00\x00\x00""abq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq"
            "\x04.",
            "opcode GLOBAL (c) refused: a pickle that imports or calls");
    /* datetime.datetime(2026, 1, 2, 3, 4, 5) */
    REFUSED("\x80\x02""cdatetime\ndatetime\nq\x00""c_codecs\nencode\nq\x01X\x0b\x00\x00\x00\x07\xc3\xaa\x01\x02"
            "\x03\x04\x05\x00\x00\x00q\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07.",
            "opcode GLOBAL (c) refused");
    REFUSED("\x80\x05\x95*\x00\x00\x00\x00\x00\x00\x00\x8c\x08""datetime\x94\x8c\x08""datetime\x94\x93\x94""C\n"
            "\x07\xea\x01\x02\x03\x04\x05\x00\x00\x00\x94\x85\x94R\x94.",
            "opcode STACK_GLOBAL (0x93) refused: a pickle that imports or calls");
    /* {1, 2}, frozenset([1]) */
    REFUSED("\x80\x02""c__builtin__\nset\nq\x00]q\x01(K\x01K\x02""e\x85q\x02Rq\x03.", "opcode GLOBAL (c) refused");
    REFUSED("\x80\x05\x95\x09\x00\x00\x00\x00\x00\x00\x00\x8f\x94(K\x01K\x02\x90.",
            "opcode EMPTY_SET (0x8f) refused: a set is not a plain value");
    REFUSED("\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00(K\x01\x91\x94.", "opcode FROZENSET (0x91) refused");
    /* class C: pass; C() (in __main__) */
    REFUSED("\x80\x02""c__main__\nC\nq\x00)\x81q\x01.", "opcode GLOBAL (c) refused");
    REFUSED("\x80\x05\x95\x15\x00\x00\x00\x00\x00\x00\x00\x8c\x08__main__\x94\x8c\x01""C\x94\x93\x94)\x81\x94.",
            "opcode STACK_GLOBAL (0x93) refused");
    /* the classic: os.system("echo") */
    REFUSED("cos\nsystem\n(S'echo'\ntR.", "opcode GLOBAL (c) refused: a pickle that imports or calls at byte 0");
    /* float("nan") protocols 2, 0; float("-inf") protocol 0 */
    REFUSED("\x80\x02G\x7f\xf8\x00\x00\x00\x00\x00\x00.", "NaN is not a JSON number");
    REFUSED("Fnan\n.", "NaN is not a JSON number");
    REFUSED("F-inf\n.", "infinity is not a JSON number");
    /* 2**64 */
    REFUSED("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01.", "integer of 9 bytes");
    /* {1: "a"} */
    REFUSED("\x80\x02}q\x00K\x01X\x01\x00\x00\x00""aq\x01s.", "dict key is a int");
    /* b"\xff" protocol 5 */
    REFUSED("\x80\x05\x95\x05\x00\x00\x00\x00\x00\x00\x00""C\x01\xff\x94.", "bytes that are not valid UTF-8");
    CHECK_EQ_INT(mismatches, 0);
}

/* l = []; l.append(l) and friends: Python writes them through the memo. */
static void test_recursive(void)
{
    REFUSED("(lp0\ng0\na.", "opcode APPEND puts a list into itself");
    REFUSED("\x80\x02]q\x00h\x00""a.", "opcode APPEND puts a list into itself");
    REFUSED("\x80\x05\x95\x06\x00\x00\x00\x00\x00\x00\x00]\x94h\x00""a.", "puts a list into itself");
    /* d = {}; d["self"] = d */
    REFUSED("\x80\x02}q\x00X\x04\x00\x00\x00selfq\x01h\x00s.", "opcode SETITEM puts a dict into itself");
    /* t = ([],); t[0].append(t) */
    REFUSED("\x80\x02]q\x00h\x00\x85q\x01""a0h\x01.", "already inside another container");
    /* by hand: APPENDS of itself; a cycle through two lists; SETITEMS */
    REFUSED("]q\x00(h\x00""e.", "opcode APPENDS puts a list into itself");
    REFUSED("]q\x00]q\x01h\x00""aa.", "opcode APPEND changes a list that is already inside another container");
    REFUSED("}q\x00(\x8c\x01""ah\x00u.", "opcode SETITEMS puts a dict into itself");
    /* DUP then APPEND: the same list */
    REFUSED("]2a.", "puts a list into itself");
    CHECK_EQ_INT(mismatches, 0);
}

/* Shared references: one value, as in Python; changing it through a GET
 * changes it everywhere it is (while it is in no container yet). */
static void test_memo_sharing(void)
{
    /* L = []; memo; GET; APPEND 1 through the copy; POP the copy: L is [1] */
    LOADS_AS("\x80\x02]q\x00h\x00K\x01""a0.", "[1]");
    /* the same with DUP */
    LOADS_AS("]2K\x01""a0.", "[1]");
    /* L = [1], then M = [L, L] from two GETs: both items are L itself */
    LOADS_AS("]q\x00K\x01""a0](h\x00h\x00""e.", "[[1],[1]]");
    char err[160];
    json_t *v = pickle_loads(PK("]q\x00K\x01""a0](h\x00h\x00""e."), err);
    CHECK(v && json_array_get(v, 0) == json_array_get(v, 1));
    json_decref(v);
    /* a dict filled through its memo copy */
    LOADS_AS("}q\x00h\x00\x8c\x01""aK\x01s0.", "{\"a\":1}");
    /* changed after it was put into another list: refused (see pickle.h) */
    REFUSED("]q\x00](h\x00""eh\x00K\x02""a0.", "opcode APPEND changes a list that is already inside another container");
    REFUSED("}q\x00\x85h\x00\x8c\x01""aK\x01s.", "opcode SETITEM changes a dict that is already inside");
    /* PUT over an entry, MEMOIZE after a sparse PUT (uses the entry count) */
    LOADS_AS("K\x01q\x00""0K\x02q\x00""0h\x00.", "2");
    LOADS_AS("K\x01q\x05K\x02\x94""00h\x01.", "2");
    REFUSED("K\x01q\x05K\x02\x94""00h\x00.", "memo index 0 is empty");
    REFUSED("h\x00.", "memo index 0 is empty");
    REFUSED("K\x01q\x01""0h\x00.", "memo index 0 is empty");
    REFUSED("p0\n.", "opcode PUT: stack underflow");
    REFUSED("\x94.", "opcode MEMOIZE: stack underflow");
    REFUSED("Ng-1\n.", "memo index is not a decimal number");
    REFUSED("Np\n.", "memo index is not a decimal number");
    CHECK_EQ_INT(mismatches, 0);
}

static void test_each_opcode(void)
{
    /* PROTO, FRAME, STOP */
    LOADS_AS("\x80\x05N.", "null");
    LOADS_AS("\x80\x00N.", "null");
    REFUSED("\x80\x06N.", "unsupported pickle protocol 6");
    LOADS_AS("\x80\x04\x95\x02\x00\x00\x00\x00\x00\x00\x00N.", "null");
    REFUSED("\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00N.", "opcode FRAME: frame of 3 bytes, but only 2 bytes left");
    REFUSED("\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x80N.", "opcode FRAME: frame of 9223372036854775808 bytes");
    REFUSED("\x95\x02\x00\x00N.", "opcode FRAME truncated");
    /* MARK, POP, POP_MARK, DUP */
    LOADS_AS("N(NN1.", "null");
    LOADS_AS("NK\x01""0.", "null");
    LOADS_AS("N(0.", "null"); /* POP right after a MARK drops the MARK */
    LOADS_AS("K\x07""2\x86.", "[7,7]");
    REFUSED("1.", "opcode POP_MARK without a MARK");
    REFUSED("N(2.", "opcode DUP: stack underflow (needs 1 value above the MARK)");
    /* NONE, NEWTRUE, NEWFALSE */
    LOADS_AS("N.", "null");
    LOADS_AS("\x88.", "true");
    LOADS_AS("\x89.", "false");
    /* INT */
    LOADS_AS("I42\n.", "42");
    LOADS_AS("I-7\n.", "-7");
    LOADS_AS("I+7\n.", "7");
    LOADS_AS("I007\n.", "7");
    LOADS_AS("I0\n.", "0");
    LOADS_AS("I1\n.", "1");
    LOADS_AS("I01\n.", "true");
    LOADS_AS("I00\n.", "false");
    LOADS_AS("I9223372036854775807\n.", "9223372036854775807");
    LOADS_AS("I-9223372036854775808\n.", "-9223372036854775808");
    REFUSED("I9223372036854775808\n.", "opcode INT: integer out of range");
    REFUSED("I-9223372036854775809\n.", "opcode INT: integer out of range");
    REFUSED("I99999999999999999999999\n.", "opcode INT: integer out of range");
    REFUSED("I1x\n.", "opcode INT: text is not a decimal integer");
    REFUSED("I0x10\n.", "opcode INT: text is not a decimal integer");
    REFUSED("I\n.", "opcode INT: no digits");
    REFUSED("I-\n.", "opcode INT: no digits");
    REFUSED("I12", "opcode INT truncated: its text has no ending newline");
    /* LONG */
    LOADS_AS("L12L\n.", "12");
    LOADS_AS("L5\n.", "5");
    LOADS_AS("L-9223372036854775808L\n.", "-9223372036854775808");
    REFUSED("L9223372036854775808L\n.", "opcode LONG: integer out of range");
    REFUSED("LL\n.", "opcode LONG: no digits");
    REFUSED("L1LL\n.", "opcode LONG: text is not a decimal integer");
    /* BININT, BININT1, BININT2 */
    LOADS_AS("J\xfe\xff\xff\xff.", "-2");
    LOADS_AS("J\x00\x00\x00\x80.", "-2147483648");
    LOADS_AS("K\xff.", "255");
    LOADS_AS("M\x01\x02.", "513");
    REFUSED("J\x01\x02.", "opcode BININT truncated: needs 4 bytes, 3 left");
    /* LONG1, LONG4 */
    LOADS_AS("\x8a\x00.", "0");
    LOADS_AS("\x8a\x01\xff.", "-1");
    LOADS_AS("\x8a\x01\x7f.", "127");
    LOADS_AS("\x8a\x02\x00\x80.", "-32768");
    LOADS_AS("\x8a\x03\x00\x80\x00.", "32768");
    LOADS_AS("\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f.", "9223372036854775807");
    LOADS_AS("\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.", "-9223372036854775808");
    REFUSED("\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00.", "opcode LONG1: integer of 9 bytes (at most 8, int64)");
    REFUSED("\x8a\x04\x01\x02.", "opcode LONG1 truncated");
    LOADS_AS("\x8b\x01\x00\x00\x00\x80.", "-128");
    LOADS_AS("\x8b\x00\x00\x00\x00.", "0");
    REFUSED("\x8b\xff\xff\xff\xff.", "opcode LONG4: negative length");
    REFUSED("\x8b\x00\x01\x00\x00.", "opcode LONG4: integer of 256 bytes");
    /* FLOAT */
    LOADS_AS("F1.5\n.", "1.5");
    LOADS_AS("F-2e3\n.", "-2000.0");
    LOADS_AS("F.5\n.", "0.5");
    LOADS_AS("F5.\n.", "5.0");
    LOADS_AS("F+1E-2\n.", "0.01");
    LOADS_AS("F1e-400\n.", "0.0"); /* underflow: 0, as Python */
    LOADS_AS("F3\n.", "3.0");
    REFUSED("F1e400\n.", "opcode FLOAT: out of range");
    REFUSED("Finf\n.", "infinity is not a JSON number");
    REFUSED("F0x10\n.", "opcode FLOAT: text is not a number");
    REFUSED("F 1\n.", "opcode FLOAT: text is not a number");
    REFUSED("F1e\n.", "opcode FLOAT: text is not a number");
    REFUSED("F.\n.", "opcode FLOAT: text is not a number");
    REFUSED("F\n.", "opcode FLOAT: text is not a number");
    REFUSED("Finfinity\n.", "opcode FLOAT: text is not a number");
    REFUSED("F0.000000000000000000000000000000000000000000000000000000000000001\n.", "longer than 63 bytes");
    /* BINFLOAT (big-endian) */
    LOADS_AS("G\x3f\xf8\x00\x00\x00\x00\x00\x00.", "1.5");
    LOADS_AS("G\x00\x00\x00\x00\x00\x00\x00\x01.", "5e-324");
    REFUSED("G\x7f\xf0\x00\x00\x00\x00\x00\x00.", "opcode BINFLOAT: infinity is not a JSON number");
    REFUSED("G\x3f\xf8.", "opcode BINFLOAT truncated");
    /* STRING (Python 2 str literal) */
    LOADS_AS("S'abc'\n.", "\"abc\"");
    LOADS_AS("S\"a'b\"\n.", "\"a'b\"");
    LOADS_AS("S'a\\'b\\\"c'\n.", "\"a'b\\\"c\"");
    LOADS_AS("S'\\x41\\101\\n\\t\\\\\\0'\n.", "\"AA\\n\\t\\\\\\u0000\"");
    LOADS_AS("S'\\xc3\\xa9'\n.", "\"\xc3\xa9\"");
    LOADS_AS("S'a\\qb'\n.", "\"a\\\\qb\""); /* an unknown escape stays */
    LOADS_AS("S''\n.", "\"\"");
    REFUSED("S'\\xff'\n.", "opcode STRING: text that is not valid UTF-8");
    REFUSED("S'\\x4'\n.", "opcode STRING: invalid \\x escape");
    REFUSED("S'a\\'\n.", "opcode STRING: trailing backslash");
    REFUSED("Sabc\n.", "opcode STRING: text is not quoted");
    REFUSED("S'abc\"\n.", "opcode STRING: text is not quoted");
    REFUSED("S'\n.", "opcode STRING: text is not quoted");
    /* BINSTRING, SHORT_BINSTRING */
    LOADS_AS("T\x03\x00\x00\x00""abc.", "\"abc\"");
    LOADS_AS("U\x02hi.", "\"hi\"");
    REFUSED("T\xff\xff\xff\xff""abc.", "opcode BINSTRING: negative length");
    REFUSED("U\x05hi.", "opcode SHORT_BINSTRING: length 5, but only 3 bytes left");
    /* UNICODE (raw-unicode-escape: bytes are Latin-1) */
    LOADS_AS("Vab\n.", "\"ab\"");
    LOADS_AS("V\n.", "\"\"");
    LOADS_AS("V\\u00e9\n.", "\"\xc3\xa9\"");
    LOADS_AS("V\xe9\n.", "\"\xc3\xa9\"");
    LOADS_AS("V\\U0001f600\n.", "\"\xf0\x9f\x98\x80\"");
    LOADS_AS("V\\u0000\n.", "\"\\u0000\"");
    LOADS_AS("V\\\\u0041\n.", "\"\\\\\\\\u0041\""); /* an even run of backslashes is no escape */
    LOADS_AS("V\\\\\\u0041\n.", "\"\\\\\\\\A\"");
    LOADS_AS("V\\x41\n.", "\"\\\\x41\"");
    LOADS_AS("V\\\n.", "\"\\\\\"");
    REFUSED("V\\u00e\n.", "opcode UNICODE: truncated \\u escape");
    REFUSED("V\\U0001f60\n.", "opcode UNICODE: truncated \\U escape");
    REFUSED("V\\u00g9\n.", "opcode UNICODE: truncated \\u escape");
    REFUSED("V\\U00110000\n.", "opcode UNICODE: \\U escape beyond U+10FFFF");
    REFUSED("V\\ud83d\\ude00\n.", "opcode UNICODE: surrogate U+D83D");
    /* BINUNICODE, SHORT_BINUNICODE, BINUNICODE8 */
    LOADS_AS("X\x02\x00\x00\x00hi.", "\"hi\"");
    LOADS_AS("X\x00\x00\x00\x00.", "\"\"");
    LOADS_AS("\x8c\x02hi.", "\"hi\"");
    LOADS_AS("\x8d\x02\x00\x00\x00\x00\x00\x00\x00hi.", "\"hi\"");
    REFUSED("X\x01\x00\x00\x00\xff.", "opcode BINUNICODE: text that is not valid UTF-8");
    REFUSED("X\x03\x00\x00\x00\xed\xa0\x80.", "not valid UTF-8"); /* a surrogate (surrogatepass) */
    REFUSED("X\x03\x00\x00\x00\xc3.", "opcode BINUNICODE: length 3, but only 2 bytes left");
    /* BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8 */
    LOADS_AS("B\x02\x00\x00\x00hi.", "\"hi\"");
    LOADS_AS("C\x02hi.", "\"hi\"");
    LOADS_AS("\x8e\x02\x00\x00\x00\x00\x00\x00\x00hi.", "\"hi\"");
    LOADS_AS("\x96\x02\x00\x00\x00\x00\x00\x00\x00hi.", "\"hi\"");
    LOADS_AS("C\x03\xe4\xb8\xad.", "\"\xe4\xb8\xad\"");
    REFUSED("C\x01\x80.", "opcode SHORT_BINBYTES: bytes that are not valid UTF-8");
    REFUSED("\x96\x01\x00\x00\x00\x00\x00\x00\x00\xc0.", "opcode BYTEARRAY8: bytes that are not valid UTF-8");
    /* EMPTY_DICT, DICT, SETITEM, SETITEMS */
    LOADS_AS("}.", "{}");
    LOADS_AS("(d.", "{}");
    LOADS_AS("(\x8c\x01""aK\x01\x8c\x01""bK\x02""d.", "{\"a\":1,\"b\":2}");
    LOADS_AS("}\x8c\x01""aK\x01s.", "{\"a\":1}");
    LOADS_AS("}\x8c\x01""aK\x01s\x8c\x01""aK\x02s.", "{\"a\":2}"); /* the last one wins */
    LOADS_AS("}(\x8c\x01""aK\x01\x8c\x01""bK\x02u.", "{\"a\":1,\"b\":2}");
    LOADS_AS("}(u.", "{}");
    LOADS_AS("}U\x01kK\x01s.", "{\"k\":1}"); /* a Python 2 str key is a str in Python 3 */
    REFUSED("(\x8c\x01""ad.", "opcode DICT: odd number of items");
    REFUSED("}(\x8c\x01""au.", "opcode SETITEMS: odd number of items");
    REFUSED("}K\x01K\x02s.", "dict key is a int (only str keys are allowed)");
    REFUSED("}C\x01""aK\x01s.", "dict key is a bytes");
    REFUSED("}N\x88s.", "dict key is a None");
    REFUSED("})K\x01s.", "dict key is a tuple");
    REFUSED("}G\x3f\xf8\x00\x00\x00\x00\x00\x00K\x01s.", "dict key is a float");
    REFUSED("}\x88K\x01s.", "dict key is a bool");
    REFUSED("]\x8c\x01""aK\x01s.", "opcode SETITEM on a list (only a dict takes items)");
    REFUSED("](\x8c\x01""aK\x01u.", "opcode SETITEMS on a list");
    REFUSED("(\x8c\x01""aK\x01u.", "opcode SETITEMS: no dict before the MARK");
    /* EMPTY_LIST, LIST, APPEND, APPENDS */
    LOADS_AS("].", "[]");
    LOADS_AS("(l.", "[]");
    LOADS_AS("(K\x01K\x02l.", "[1,2]");
    LOADS_AS("]K\x01""a.", "[1]");
    LOADS_AS("](K\x01K\x02""e.", "[1,2]");
    LOADS_AS("](e.", "[]");
    REFUSED(")K\x01""a.", "opcode APPEND on a tuple (only a list takes items)");
    REFUSED("}K\x01""a.", "opcode APPEND on a dict");
    REFUSED("C\x01xK\x01""a.", "opcode APPEND on a bytes");
    REFUSED(")(K\x01""e.", "opcode APPENDS on a tuple");
    REFUSED("(K\x01""e.", "opcode APPENDS: no list before the MARK");
    REFUSED("](((e.", "opcode APPENDS: no list before the MARK");
    REFUSED("](K\x01""a.", "opcode APPEND: stack underflow (needs 2 values above the MARK)");
    /* EMPTY_TUPLE, TUPLE, TUPLE1-3 */
    LOADS_AS(").", "[]");
    LOADS_AS("(t.", "[]");
    LOADS_AS("(K\x01K\x02t.", "[1,2]");
    LOADS_AS("K\x01\x85.", "[1]");
    LOADS_AS("K\x01K\x02\x86.", "[1,2]");
    LOADS_AS("K\x01K\x02K\x03\x87.", "[1,2,3]");
    REFUSED("K\x01K\x02\x87.", "opcode TUPLE3: stack underflow");
    REFUSED("K\x01(\x85.", "opcode TUPLE1: stack underflow (needs 1 value above the MARK)");
    /* PUT, BINPUT, LONG_BINPUT, MEMOIZE, GET, BINGET, LONG_BINGET */
    LOADS_AS("K\x01p0\n0g0\n.", "1");
    LOADS_AS("K\x01p99999\n0g99999\n.", "1");
    LOADS_AS("K\x01q\x05""0h\x05.", "1");
    LOADS_AS("K\x01r\x10\x27\x00\x00""0j\x10\x27\x00\x00.", "1");
    LOADS_AS("K\x01\x94K\x02\x94""00h\x01.", "2");
    CHECK_EQ_INT(mismatches, 0);
}

/* Every opcode that imports, calls or builds, by name. */
static void test_refused_opcodes(void)
{
    static const struct {
        unsigned char op;
        const char *msg;
    } ops[] = {
        {'c', "opcode GLOBAL (c) refused: a pickle that imports or calls"},
        {0x93, "opcode STACK_GLOBAL (0x93) refused: a pickle that imports or calls"},
        {'R', "opcode REDUCE (R) refused: a pickle that imports or calls"},
        {'i', "opcode INST (i) refused: a pickle that imports or calls"},
        {'o', "opcode OBJ (o) refused: a pickle that imports or calls"},
        {0x81, "opcode NEWOBJ (0x81) refused: a pickle that imports or calls"},
        {0x92, "opcode NEWOBJ_EX (0x92) refused: a pickle that imports or calls"},
        {'b', "opcode BUILD (b) refused: a pickle that builds objects"},
        {0x82, "opcode EXT1 (0x82) refused: a pickle that imports or calls"},
        {0x83, "opcode EXT2 (0x83) refused"},
        {0x84, "opcode EXT4 (0x84) refused"},
        {'P', "opcode PERSID (P) refused: a persistent id"},
        {'Q', "opcode BINPERSID (Q) refused: a persistent id"},
        {0x8f, "opcode EMPTY_SET (0x8f) refused: a set is not a plain value"},
        {0x90, "opcode ADDITEMS (0x90) refused"},
        {0x91, "opcode FROZENSET (0x91) refused"},
        {0x97, "opcode NEXT_BUFFER (0x97) refused: out-of-band buffers"},
        {0x98, "opcode READONLY_BUFFER (0x98) refused"},
    };
    for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
        /* after a valid start, and with what would follow a real use */
        unsigned char buf[] = {0x80, 0x02, 'N', ops[i].op, 'N', '.'};
        char err[160];
        json_t *v = load(buf, sizeof(buf), err);
        CHECK(v == NULL);
        CHECK_CONTAINS(err, ops[i].msg);
        CHECK_CONTAINS(err, "at byte 3");
    }
    /* every byte that is no opcode at all */
    int unknown = 0;
    for (int c = 0; c < 256; c++) {
        static const char known[] = "(.012FIJKLMNPQRSTUVXabcd}eghijl]opqrst)uGBC";
        if ((c >= 0x80 && c <= 0x98) || (c && strchr(known, c))) continue;
        unsigned char buf[] = {(unsigned char)c, 'N', '.'};
        char err[160], want[32];
        json_t *v = load(buf, sizeof(buf), err);
        snprintf(want, sizeof(want), "unknown opcode 0x%02x", c);
        CHECK(v == NULL && strstr(err, want));
        unknown++;
    }
    CHECK_EQ_INT(unknown, 256 - 43 - 25);
}

static void test_stack_and_marks(void)
{
    REFUSED("", "empty input");
    REFUSED(".", "opcode STOP with 0 values on the stack");
    REFUSED("NN.", "opcode STOP with 2 values on the stack");
    REFUSED("(N.", "opcode STOP with an open MARK");
    REFUSED("N", "pickle ends without STOP at byte 1");
    REFUSED("\x80\x02]q\x00(K\x01", "pickle ends without STOP");
    REFUSED("N.N", "1 byte after STOP at byte 2");
    REFUSED("N.\x00\x00\x00", "3 bytes after STOP");
    REFUSED("N.\n", "1 byte after STOP");
    REFUSED("0.", "opcode POP: stack underflow");
    REFUSED("a.", "opcode APPEND: stack underflow");
    REFUSED("Ns.", "opcode SETITEM: stack underflow");
    REFUSED("\x85.", "opcode TUPLE1: stack underflow");
    REFUSED("t.", "opcode TUPLE without a MARK");
    REFUSED("l.", "opcode LIST without a MARK");
    REFUSED("d.", "opcode DICT without a MARK");
    REFUSED("]e.", "opcode APPENDS without a MARK");
    REFUSED("}u.", "opcode SETITEMS without a MARK");
    REFUSED("(0N00.", "opcode POP: stack underflow"); /* the first POP takes the MARK */
    CHECK(pickle_loads(NULL, 5, (char[160]){0}) == NULL);
    CHECK_EQ_INT(mismatches, 0);
}

/* Appends n copies of s (no NUL byte in it) to b at *o. */
static void put_n(unsigned char *b, size_t *o, const char *s, size_t n)
{
    size_t k = strlen(s);
    for (size_t i = 0; i < n; i++, *o += k) memcpy(b + *o, s, k);
}

/* n nested lists around 1, the way Python writes them (protocol 2: EMPTY_LIST
 * BINPUT per level, APPEND per level; protocol 0: MARK LIST PUT). */
static size_t nested_lists(unsigned char *b, int n, int proto)
{
    size_t o = 0;
    if (proto == 2) {
        memcpy(b, "\x80\x02", 2), o = 2;
        for (int i = 0; i < n; i++) b[o++] = ']', b[o++] = 'q', b[o++] = (unsigned char)i;
        b[o++] = 'K', b[o++] = 1;
    } else {
        for (int i = 0; i < n; i++) o += (size_t)sprintf((char *)b + o, "(lp%d\n", i);
        memcpy(b + o, "I1\n", 3), o += 3;
    }
    put_n(b, &o, "a", (size_t)n);
    b[o++] = '.';
    return o;
}

static void test_depth(void)
{
    unsigned char b[1024];
    char err[160];
    for (int proto = 0; proto <= 2; proto += 2) {
        json_t *v = load(b, nested_lists(b, PICKLE_MAX_DEPTH, proto), err);
        CHECK(v != NULL);
        int depth = 0;
        for (json_t *x = v; json_is_array(x); x = json_array_get(x, 0)) depth++;
        CHECK_EQ_INT(depth, PICKLE_MAX_DEPTH);
        /* the writer takes it too, and the result loads again */
        size_t n;
        unsigned char *p = pickle_dumps(v, &n);
        json_t *w = p ? load(p, n, err) : NULL;
        CHECK(w && json_equal(v, w));
        free(p);
        json_decref(w);
        json_decref(v);
        v = load(b, nested_lists(b, PICKLE_MAX_DEPTH + 1, proto), err);
        CHECK(v == NULL);
        CHECK_CONTAINS(err, "nesting deeper than 64");
    }
    /* tuples wrapped with constant stack: N then 65 x TUPLE1 */
    size_t o = 0;
    b[o++] = 'N';
    put_n(b, &o, "\x85", PICKLE_MAX_DEPTH);
    b[o++] = '.';
    json_t *v = load(b, o, err);
    CHECK(v != NULL);
    json_decref(v);
    o = 0;
    b[o++] = 'N';
    put_n(b, &o, "\x85", PICKLE_MAX_DEPTH + 1);
    b[o++] = '.';
    CHECK(load(b, o, err) == NULL);
    CHECK_CONTAINS(err, "nesting deeper than 64");
    /* a dict of ... : the height of what is put in counts, also via the memo */
    o = 0;
    put_n(b, &o, "]", 64);
    put_n(b, &o, "a", 63);
    memcpy(b + o, "q\x00}\x8c\x01kh\x00s.", 10), o += 10;
    CHECK(load(b, o, err) == NULL);
    CHECK_CONTAINS(err, "nesting deeper than 64");
    /* MARKs: 64 open ones are fine, 65 are not */
    o = 0;
    put_n(b, &o, "(", 64);
    put_n(b, &o, "l", 64);
    b[o++] = '.';
    v = load(b, o, err);
    CHECK(v != NULL);
    json_decref(v);
    o = 0;
    put_n(b, &o, "(", 65);
    CHECK(load(b, o, err) == NULL);
    CHECK_CONTAINS(err, "more than 64 open MARKs");
}

static void test_limits(void)
{
    char err[160];
    /* huge length fields */
    REFUSED("X\xff\xff\xff\xff""abc.", "opcode BINUNICODE: length 4294967295, but only 4 bytes left");
    REFUSED("\x8d\xff\xff\xff\xff\xff\xff\xff\xff""a.", "opcode BINUNICODE8: length 18446744073709551615");
    REFUSED("\x8e\x00\x00\x00\x00\x00\x00\x00\x80.", "opcode BINBYTES8: length 9223372036854775808");
    REFUSED("\x96\x05\x00\x00\x00\x00\x00\x00\x00.", "opcode BYTEARRAY8: length 5, but only 1 bytes left");
    REFUSED("B\x00\x00\x00\x80.", "opcode BINBYTES: length 2147483648");
    REFUSED("\x8b\xff\xff\xff\x7f.", "opcode LONG4: integer of 2147483647 bytes");
    REFUSED("\x8c", "opcode SHORT_BINUNICODE truncated: needs 1 byte, 0 left");
    /* memo indexes */
    REFUSED("Nr\xa0\x86\x01\x00.", "opcode LONG_BINPUT: memo index 100000 (at most 100000 entries)");
    REFUSED("Nr\xff\xff\xff\xff.", "memo index 4294967295");
    REFUSED("Np100000\n.", "opcode PUT: memo index 100000");
    REFUSED("j\xa0\x86\x01\x00.", "opcode LONG_BINGET: memo index 100000");
    REFUSED("Np99999999999999999999999\n.", "opcode PUT: integer out of range");
    LOADS_AS("Nr\x9f\x86\x01\x00""0j\x9f\x86\x01\x00.", "null");

    /* a billion laughs: L = [None] * 1000 (1001 values), M = [L, L, ...] */
    size_t cap = 8 * 1024 * 1024;
    unsigned char *b = malloc(cap);
    size_t o = 0;
    memcpy(b, "]q\x01(", 4), o = 4;
    put_n(b, &o, "N", 1000);
    memcpy(b + o, "e0](", 4), o += 4;
    put_n(b, &o, "h\x01", 999);
    memcpy(b + o, "e.", 2), o += 2;
    json_t *v = load(b, o, err); /* 999 copies: 1 + 999 * 1001 = 999 000 values */
    CHECK(v != NULL);
    json_decref(v);
    o -= 2;
    put_n(b, &o, "h\x01", 2);
    memcpy(b + o, "e.", 2), o += 2;
    CHECK(load(b, o, err) == NULL); /* 1001 copies: 1 003 002 values */
    CHECK_CONTAINS(err, "more than 1000000 values");

    /* the same with string bytes: 64 KiB, 1025 times */
    o = 0;
    b[o++] = 'X';
    uint32_t n = 64 * 1024;
    memcpy(b + o, &(unsigned char[4]){0, 0, 1, 0}, 4), o += 4;
    memset(b + o, 'x', n), o += n;
    memcpy(b + o, "q\x01""0](", 5), o += 5;
    put_n(b, &o, "h\x01", 1024);
    memcpy(b + o, "e.", 2), o += 2;
    v = load(b, o, err); /* exactly 64 MiB */
    CHECK(v != NULL);
    json_decref(v);
    o -= 2;
    put_n(b, &o, "h\x01", 1);
    memcpy(b + o, "e.", 2), o += 2;
    CHECK(load(b, o, err) == NULL);
    CHECK_CONTAINS(err, "more than 67108864 bytes of strings");
    /* dict keys count as values too */
    o = 0;
    memcpy(b, "}(", 2), o = 2;
    for (unsigned i = 0; i < 499999; i++) { /* distinct short keys, each with None */
        int k = sprintf((char *)b + o + 2, "%x", i);
        b[o] = 0x8c, b[o + 1] = (unsigned char)k, o += 2 + (size_t)k;
        b[o++] = 'N';
    }
    memcpy(b + o, "u.", 2);
    v = load(b, o + 2, err); /* 1 + 2 * 499999 values */
    CHECK(v != NULL && json_object_size(v) == 499999);
    json_decref(v);
    memcpy(b + o, "\x8c\x01zNu.", 6), o += 6;
    CHECK(load(b, o, err) == NULL);
    CHECK_CONTAINS(err, "more than 1000000 values");

    /* values made: more than 1 000 000 Nones popped one by one */
    o = 0;
    put_n(b, &o, "N0", 1000001);
    memcpy(b + o, "N.", 2), o += 2;
    CHECK(load(b, o, err) == NULL);
    CHECK_CONTAINS(err, "more than 1000000 values made");
    /* the stack: DUP makes no value but takes a slot */
    o = 0;
    b[o++] = 'N';
    put_n(b, &o, "2", 1000000);
    CHECK(load(b, o, err) == NULL);
    CHECK_CONTAINS(err, "more than 1000000 values on the stack");
    free(b);
    CHECK_EQ_INT(mismatches, 0);
}

/* Every prefix of every valid pickle is refused, never read past; so is
 * every pickle with a byte changed or dropped (no crash, a reason). */
static void test_truncated_and_mutated(void)
{
    char err[160];
    int accepted_prefixes = 0, no_reason = 0;
    for (size_t i = 0; i < NPY; i++) {
        const struct pycase *c = &pycases[i];
        for (size_t k = 0; k < c->len; k++) {
            json_t *v = load(c->buf, k, err);
            if (v) accepted_prefixes++;
            else if (!err[0]) no_reason++;
            json_decref(v);
        }
        /* trailing garbage */
        unsigned char *t = malloc(c->len + 1);
        memcpy(t, c->buf, c->len);
        t[c->len] = '.';
        json_t *v = load(t, c->len + 1, err);
        CHECK(v == NULL && strstr(err, "1 byte after STOP"));
        free(t);
    }
    CHECK_EQ_INT(accepted_prefixes, 0);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 20000; round++) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        const struct pycase *c = &pycases[rng % NPY];
        unsigned char *m = malloc(c->len);
        memcpy(m, c->buf, c->len);
        size_t at = (size_t)(rng >> 8) % c->len, len = c->len;
        if (round % 3 == 2) memmove(m + at, m + at + 1, --len - at);
        else m[at] = (unsigned char)(rng >> 40);
        json_t *v = load(m, len, err);
        if (!v && !err[0]) no_reason++;
        json_decref(v);
        free(m);
    }
    CHECK_EQ_INT(no_reason, 0);
}

/* ---- the writer ---- */

static void round_trip(const char *json)
{
    json_t *v = J(json);
    size_t n = 0;
    char err[160];
    unsigned char *p = pickle_dumps(v, &n);
    json_t *back = p ? load(p, n, err) : NULL;
    if (!back || !json_equal(v, back)) {
        mismatches++;
        fprintf(stderr, "round trip of %s failed: %s\n", json, p ? (back ? "not equal" : err) : "dumps NULL");
    }
    CHECK(back && json_equal(v, back));
    CHECK(p && n >= 3 && p[0] == 0x80 && p[1] == 2 && p[n - 1] == '.');
    free(p);
    json_decref(back);
    if (json_is_array(v)) {
        p = pickle_dumps_tuple(v, &n);
        back = p ? load(p, n, err) : NULL;
        CHECK(back && json_equal(v, back));
        free(p);
        json_decref(back);
    }
    json_decref(v);
}

static void test_round_trips(void)
{
    static const char *const cases[] = {
        "null", "true", "false", "0", "1", "-1", "255", "256", "65535", "65536", "-256", "-32768", "-32769",
        "2147483647", "2147483648", "-2147483648", "-2147483649", "4294967296", "9223372036854775807",
        "-9223372036854775808", "127", "128", "-128", "-129", "549755813887", "549755813888",
        "0.0", "-0.0", "0.5", "1e300", "-1e-300", "5e-324", "1.7976931348623157e308", "0.1",
        "\"\"", "\"x\"", "\"\xc3\xa9\xf0\x9f\x98\x80\xe4\xb8\xad\"", "\"a\\u0000b\\n\\\\\"", "[]", "{}",
        "[[]]", "[{}]", "{\"\":{}}", "[1,2,3]", "[null,true,false,1.5,\"s\",[],{}]",
        RESULT_JSON, JOB_JSON, NESTED_JSON, UNICODE_JSON, INTS_JSON, FLOATS_JSON,
        "{\"a\":1,\"\xc3\xa9\":[{\"x\":[[[\"deep\"]]]}]}",
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) round_trip(cases[i]);

    /* keys with a NUL byte: refused (jansson's parser refuses them too, and a C-string API
     * would see a shorter key); the writer writes them whole */
    REFUSED("}\x8c\x03""a\x00""bK\x01s.", "dict key with a NUL byte refused");
    json_t *nk = json_object();
    json_object_setn_new_nocheck(nk, "a\0b", 3, json_integer(1));
    size_t kn;
    unsigned char *kp = pickle_dumps(nk, &kn);
    CHECK(kp && kn == 16 && memcmp(kp, "\x80\x02}(X\x03\x00\x00\x00""a\x00""bK\x01u.", 16) == 0);
    free(kp);
    json_decref(nk);

    /* a long list and a big object */
    json_t *a = json_array(), *o = json_object();
    for (int i = 0; i < 5000; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        json_array_append_new(a, i % 2 ? json_integer(i * 1000003LL) : json_string(k));
        json_object_set_new(o, k, json_real(i / 7.0));
    }
    json_array_append_new(a, o);
    size_t n;
    char err[160];
    unsigned char *p = pickle_dumps(a, &n);
    json_t *back = p ? load(p, n, err) : NULL;
    CHECK(back && json_equal(a, back));
    free(p);
    json_decref(back);
    json_decref(a);
    CHECK_EQ_INT(mismatches, 0);
}

/* The exact bytes of the writer. */
static void same_bytes(const json_t *v, bool tuple, const unsigned char *want, size_t wlen, int line)
{
    size_t n = 0;
    unsigned char *p = tuple ? pickle_dumps_tuple(v, &n) : pickle_dumps(v, &n);
    bool ok = p && n == wlen && memcmp(p, want, n) == 0;
    if (!ok) fprintf(stderr, "%s:%d: pickle_dumps wrote other bytes (%zu, expected %zu)\n", __FILE__, line, n, wlen);
    CHECK(ok);
    free(p);
}
#define SAME_BYTES(json, tuple, lit)                                                               \
    do {                                                                                           \
        json_t *v_ = J(json);                                                                      \
        same_bytes(v_, (tuple), PK(lit), __LINE__);                                                \
        json_decref(v_);                                                                           \
    } while (0)

static void test_writer_bytes(void)
{
    SAME_BYTES("null", false, "\x80\x02N.");
    SAME_BYTES("[true,false]", false, "\x80\x02](\x88\x89""e.");
    SAME_BYTES("{\"a\":1}", false, "\x80\x02}(X\x01\x00\x00\x00""aK\x01u.");
    SAME_BYTES("[]", false, "\x80\x02].");
    SAME_BYTES("[]", true, "\x80\x02).");
    SAME_BYTES("[1,[2]]", true, "\x80\x02(K\x01](K\x02""et.");
    SAME_BYTES("[255,256,65536,-1]", false,
               "\x80\x02](K\xffM\x00\x01J\x00\x00\x01\x00J\xff\xff\xff\xff""e.");
    /* LONG1: shortest two's complement, as Python's encode_long */
    SAME_BYTES("2147483648", false, "\x80\x02\x8a\x05\x00\x00\x00\x80\x00.");
    SAME_BYTES("-2147483649", false, "\x80\x02\x8a\x05\xff\xff\xff\x7f\xff.");
    SAME_BYTES("9223372036854775807", false, "\x80\x02\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f.");
    SAME_BYTES("-9223372036854775808", false, "\x80\x02\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x80.");
    SAME_BYTES("0.012", false, "\x80\x02G\x3f\x88\x93t\xbcj~\xfa.");
    SAME_BYTES("\"\xc3\xa9\"", false, "\x80\x02X\x02\x00\x00\x00\xc3\xa9.");
}

static void test_writer_refuses(void)
{
    size_t n = 7;
    /* 64 nested arrays are written, 65 are not (also under a top-level tuple) */
    json_t *v = json_array();
    for (int i = 1; i < PICKLE_MAX_DEPTH; i++) {
        json_t *w = json_array();
        json_array_append_new(w, v);
        v = w;
    }
    unsigned char *p = pickle_dumps(v, &n);
    CHECK(p != NULL);
    free(p);
    p = pickle_dumps_tuple(v, &n); /* the tuple is the outer level: still 64 */
    CHECK(p != NULL);
    free(p);
    json_t *w = json_array();
    json_array_append_new(w, v);
    n = 7;
    CHECK(pickle_dumps(w, &n) == NULL && n == 0);
    CHECK(pickle_dumps_tuple(w, &n) == NULL && n == 0);
    json_decref(w);
    /* the tuple form needs an array */
    json_t *o = J("{\"a\":1}");
    CHECK(pickle_dumps_tuple(o, &n) == NULL);
    json_decref(o);
    CHECK(pickle_dumps(NULL, &n) == NULL);
    /* a string that is not UTF-8 (made without jansson's check) */
    json_t *s = json_stringn_nocheck("\xff", 1);
    CHECK(pickle_dumps(s, &n) == NULL);
    json_t *arr = json_pack("[o]", s);
    CHECK(pickle_dumps_tuple(arr, &n) == NULL);
    json_decref(arr);
    json_t *bad_key = json_object();
    json_object_setn_new_nocheck(bad_key, "\xc3", 1, json_null());
    CHECK(pickle_dumps(bad_key, &n) == NULL);
    json_decref(bad_key);
}

/* ---- the interop modes ---- */

static int write_file(const char *dir, const char *name, const unsigned char *p, size_t n)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s.pickle", dir, name);
    FILE *f = fopen(path, "wb");
    int ok = f && p && fwrite(p, 1, n, f) == n;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok) fprintf(stderr, "test_pickle: cannot write %s\n", path);
    return ok;
}

/* The files tests/interop/test_pickle_python.py loads in Python and
 * compares with its own copy of these values. */
static void dump_files(const char *dir)
{
    static const struct {
        const char *name, *json;
        bool tuple;
    } files[] = {
        {"job", JOB_JSON, true},
        {"result", RESULT_JSON, false},
        {"scalars",
         "[0,1,-1,255,256,65535,65536,-2147483648,2147483647,2147483648,9223372036854775807,"
         "-9223372036854775808,-129,-256,-32769,0.5,-0.0,1e100,5e-324,1.7976931348623157e308,0.1,"
         "true,false,null,\"\",\"\xc3\xa9\xf0\x9f\x98\x80\xe4\xb8\xad\",\"a\\u0000b\"]",
         false},
        {"nested", "{\"a\":[[[]]],\"b\":{\"c\":{\"d\":[]}},\"\":[{}],\"t\":[1,[2,[3]]]}", false},
        {"empty_tuple", "[]", true},
        {"one_tuple", "[[\"x\"]]", true},
        {"null", "null", false},
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        json_t *v = J(files[i].json);
        size_t n;
        unsigned char *p = files[i].tuple ? pickle_dumps_tuple(v, &n) : pickle_dumps(v, &n);
        CHECK(write_file(dir, files[i].name, p, n));
        free(p);
        json_decref(v);
    }
    /* 64 nested lists around "deep"; a list of 3000 items and a dict of 1500 keys */
    json_t *v = json_string("deep");
    for (int i = 0; i < PICKLE_MAX_DEPTH; i++) v = json_pack("[o]", v);
    size_t n;
    unsigned char *p = pickle_dumps(v, &n);
    CHECK(write_file(dir, "deep", p, n));
    free(p);
    json_decref(v);
    json_t *a = json_array(), *o = json_object();
    for (int i = 0; i < 3000; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        json_array_append_new(a, i % 2 ? json_integer((json_int_t)i * i * i * i) : json_string(k));
        if (i < 1500) json_object_set_new(o, k, json_integer(-i));
    }
    json_array_append_new(a, o);
    p = pickle_dumps(a, &n);
    CHECK(write_file(dir, "big", p, n));
    free(p);
    json_decref(a);
}

static int load_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "test_pickle: cannot open %s\n", path);
        return 2;
    }
    size_t cap = 1 << 16, n = 0;
    unsigned char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (!buf) return 2;
    char err[160];
    json_t *v = pickle_loads(buf, n, err);
    free(buf);
    if (!v) {
        printf("refused: %s\n", err);
        return 3;
    }
    char *text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(v);
    if (!text) return 2;
    printf("%s\n", text);
    free(text);
    return 0;
}

int main(void)
{
    const char *load_path = getenv("PICKLE_LOAD_FILE");
    if (load_path) return load_file(load_path);
    const char *dir = getenv("PICKLE_DUMP_DIR");
    if (dir) {
        unit_current = "dump_files";
        dump_files(dir);
    }
    RUN(test_python_bytes);
    RUN(test_python_refusals);
    RUN(test_recursive);
    RUN(test_memo_sharing);
    RUN(test_each_opcode);
    RUN(test_refused_opcodes);
    RUN(test_stack_and_marks);
    RUN(test_depth);
    RUN(test_limits);
    RUN(test_truncated_and_mutated);
    RUN(test_round_trips);
    RUN(test_writer_bytes);
    RUN(test_writer_refuses);
    UNIT_END();
}
