/*
 * storage._speedups: the metadata walk's common case in C (optional).
 *
 * Theory of operation: storage/_meta.py walks a streamed data set element by element
 * (PS3.5 7.1). Its fast loop, MetadataExtractor._run, handles top-level elements lying
 * whole in one fragment; everything else (an element straddling a fragment, an
 * undefined length, a malformed VR, nesting) is left to the Python step machine. This
 * module is that one loop, decision for decision, and nothing more: walk() stops
 * exactly where _run() stops, captures exactly what it captures, and leaves the same
 * state behind. storage/_meta.py uses it when it was built and SCPFLEET_PURE_PYTHON is
 * not set; the tests run both and compare them on valid, damaged and random streams.
 *
 * The input is a peer's bytes: every read below is bounds-checked against `end`, which
 * is itself checked against the buffer's length. No state is kept between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* (0008,0005) ... (0020,0013): the tags _meta._WANTED names, in ascending order. Their
 * field names come from Python with each call (one tuple, in this order), so the names
 * are defined once, in _meta.py. */
static const uint32_t WANTED[] = {
    0x00080005u, 0x00080016u, 0x00080018u, 0x00080020u, 0x00080030u,
    0x00080050u, 0x00080060u, 0x00080090u, 0x00081030u, 0x0008103Eu,
    0x00100010u, 0x00100020u, 0x00100030u, 0x00100040u, 0x00180015u,
    0x0020000Du, 0x0020000Eu, 0x00200010u, 0x00200011u, 0x00200013u,
};
#define N_WANTED ((Py_ssize_t)(sizeof(WANTED) / sizeof(WANTED[0])))
#define LAST_WANTED 0x00200013u
#define VALUE_CAP 1024u
#define UNDEFINED 0xFFFFFFFFu

static Py_ssize_t
wanted_index(uint32_t tag)
{
    Py_ssize_t lo = 0, hi = N_WANTED - 1;
    while (lo <= hi) {
        Py_ssize_t mid = (lo + hi) / 2;
        if (WANTED[mid] == tag)
            return mid;
        if (WANTED[mid] < tag)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static inline uint32_t
u16_at(const unsigned char *p, int big)
{
    return big ? ((uint32_t)p[0] << 8) | p[1] : ((uint32_t)p[1] << 8) | p[0];
}

static inline uint32_t
u32_at(const unsigned char *p, int big)
{
    return big ? ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]
               : ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}

/* PS3.5 6.2: the explicit VRs with 2 reserved bytes and a 32-bit length. */
static int
is_long_vr(unsigned char a, unsigned char b)
{
    switch (a) {
    case 'O':
        return b == 'B' || b == 'D' || b == 'F' || b == 'L' || b == 'V' || b == 'W';
    case 'S':
        return b == 'Q' || b == 'V';
    case 'U':
        return b == 'C' || b == 'N' || b == 'R' || b == 'T' || b == 'V';
    default:
        return 0;
    }
}

static inline int
is_upper(unsigned char c)
{
    return c >= 'A' && c <= 'Z';
}

PyDoc_STRVAR(walk_doc,
"walk(data, pos, end, big, implicit, values, names) -> (pos, stopped, skip)\n\n"
"MetadataExtractor._run over data[pos:end]: wanted values are stored in the dict\n"
"``values`` under names[i] (as bytes, at most 1024). Returns where the walk stopped,\n"
"whether it is over for good (a tag past (0020,0013), or (0020,0013) read), and the\n"
"bytes still to skip past ``end`` (0 when none).");

static PyObject *
walk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "walk() takes 7 arguments");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t end = PyLong_AsSsize_t(args[2]);
    if (end == -1 && PyErr_Occurred())
        return NULL;
    int big = PyObject_IsTrue(args[3]);
    int implicit = PyObject_IsTrue(args[4]);
    if (big < 0 || implicit < 0)
        return NULL;
    PyObject *values = args[5];
    PyObject *names = args[6];
    if (!PyDict_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "values must be a dict");
        return NULL;
    }
    if (!PyTuple_CheckExact(names) || PyTuple_GET_SIZE(names) != N_WANTED) {
        PyErr_Format(PyExc_TypeError, "names must be a tuple of %zd names", N_WANTED);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pos < 0 || end < pos || end > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "pos and end must satisfy 0 <= pos <= end <= len(data)");
        return NULL;
    }
    const unsigned char *buf = (const unsigned char *)view.buf;
    int stopped = 0;
    long long skip = 0;

    while (end - pos >= 8) {
        const unsigned char *p = buf + pos;
        uint32_t tag = (u16_at(p, big) << 16) | u16_at(p + 2, big);
        if (tag > LAST_WANTED) {
            stopped = 1;
            pos = end;
            break;
        }
        uint32_t length;
        Py_ssize_t start;
        if (implicit) {
            length = u32_at(p + 4, big);
            start = pos + 8;
        }
        else {
            if (!is_upper(p[4]) || !is_upper(p[5]))
                break; /* no valid VR: the step machine raises */
            if (is_long_vr(p[4], p[5])) {
                if (end - pos < 12)
                    break;
                length = u32_at(p + 8, big);
                start = pos + 12;
            }
            else {
                length = u16_at(p + 6, big);
                start = pos + 8;
            }
        }
        if (length == UNDEFINED)
            break; /* a container: the step machine opens it */
        Py_ssize_t index = wanted_index(tag);
        if (index >= 0) {
            Py_ssize_t take = length < VALUE_CAP ? (Py_ssize_t)length : (Py_ssize_t)VALUE_CAP;
            if (take > end - start)
                break; /* the value straddles the fragment's end */
            PyObject *value = PyBytes_FromStringAndSize((const char *)buf + start, take);
            if (value == NULL || PyDict_SetItem(values, PyTuple_GET_ITEM(names, index), value) < 0) {
                Py_XDECREF(value);
                PyBuffer_Release(&view);
                return NULL;
            }
            Py_DECREF(value);
            if (tag == LAST_WANTED) {
                stopped = 1;
                pos = end;
                break;
            }
        }
        /* start <= end and length < 2**32: no overflow in 64 bits. */
        long long next = (long long)start + (long long)length;
        if (next > (long long)end) {
            skip = next - (long long)end;
            pos = end;
            break;
        }
        pos = (Py_ssize_t)next;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("(nOL)", pos, stopped ? Py_True : Py_False, skip);
}

PyDoc_STRVAR(decode_values_doc,
"decode_values(values) -> dict\n\n"
"MetadataExtractor.values(): each bytes value decoded as Latin-1 with spaces and NULs\n"
"stripped from both ends, in a new dict with the same keys.");

static PyObject *
decode_values(PyObject *module, PyObject *values)
{
    if (!PyDict_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "values must be a dict");
        return NULL;
    }
    PyObject *out = PyDict_New();
    if (out == NULL)
        return NULL;
    Py_ssize_t i = 0;
    PyObject *key, *raw;
    while (PyDict_Next(values, &i, &key, &raw)) {
        if (!PyBytes_CheckExact(raw)) {
            PyErr_SetString(PyExc_TypeError, "values must be bytes");
            Py_DECREF(out);
            return NULL;
        }
        const char *s = PyBytes_AS_STRING(raw);
        Py_ssize_t lo = 0, hi = PyBytes_GET_SIZE(raw);
        while (lo < hi && (s[lo] == ' ' || s[lo] == '\0'))
            lo++;
        while (hi > lo && (s[hi - 1] == ' ' || s[hi - 1] == '\0'))
            hi--;
        PyObject *text = PyUnicode_DecodeLatin1(s + lo, hi - lo, NULL);
        if (text == NULL || PyDict_SetItem(out, key, text) < 0) {
            Py_XDECREF(text);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(text);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL, walk_doc},
    {"decode_values", decode_values, METH_O, decode_values_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "storage._speedups",
    "The metadata walk's common case in C; see storage/_meta.py.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    /* The tags, in the order walk() expects their names: _meta.py checks them. */
    PyObject *tags = PyTuple_New(N_WANTED);
    if (tags == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < N_WANTED; i++) {
        PyObject *tag = PyLong_FromUnsignedLong(WANTED[i]);
        if (tag == NULL) {
            Py_DECREF(tags);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(tags, i, tag);
    }
    if (PyModule_AddObject(m, "TAGS", tags) < 0) {
        Py_DECREF(tags);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
