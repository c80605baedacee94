/* sb.call() in C: the CPython entry point of the native backend (docs/embedding.md,
 * "What it costs").
 *
 * Sandbox.call is a FastCall object (vectorcall). It handles the common case itself: a
 * parked sandbox, an export whose signature is integers only (or untyped), plain ints in
 * range, no keyword arguments, no host function running. Everything else, and whatever
 * happens after the sandbox stopped for something other than its return (runtime calls,
 * host functions, faults, timeouts), goes to the Python code in api.py, which owns the
 * semantics: this file only takes the shortcut when the answer is the same.
 *
 * The GIL. Releasing it around a call costs a hand-off to any other thread that waits for
 * it, more than a short call itself: two threads making 100 ns calls ran at 0.46x one
 * thread. So each export keeps a moving average of its calls' duration: calls expected to
 * be short run holding the GIL, longer ones release it. A call that holds it and runs long
 * anyway is stopped by the thread's service tick (tmebox_native.c, <= ~1 ms), which saves
 * its whole state; it then goes on with the GIL released (tmebox_continue), so no tenant
 * keeps the host's other threads waiting for longer than that.
 *
 * SandboxLock is the sandbox's re-entrant lock (api.py's `Sandbox._lock`): a C type so that
 * this path can take it without a Python call. All its state changes under the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <x86intrin.h>

#include "tmebox_native.h"

/* Calls expected to take longer than this release the GIL. */
#define GIL_HOLD_NS 2000

static double tsc_per_ns = 2.0;

/* -- SandboxLock ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    unsigned long owner;
    unsigned long count;
} LockObject;

static int lock_take(LockObject *l, int blocking)
{
    unsigned long me = PyThread_get_thread_ident();
    if (l->count && l->owner == me) {
        l->count++;
        return 1;
    }
    if (!PyThread_acquire_lock(l->lock, NOWAIT_LOCK)) {
        if (!blocking)
            return 0;
        for (;;) {
            PyLockStatus r;
            Py_BEGIN_ALLOW_THREADS
            r = PyThread_acquire_lock_timed(l->lock, -1, 1);
            Py_END_ALLOW_THREADS
            if (r == PY_LOCK_ACQUIRED)
                break;
            if (r == PY_LOCK_INTR && PyErr_CheckSignals() < 0)
                return -1;
        }
    }
    l->owner = me;
    l->count = 1;
    return 1;
}

static int lock_give(LockObject *l)
{
    if (!l->count || l->owner != PyThread_get_thread_ident()) {
        PyErr_SetString(PyExc_RuntimeError, "cannot release un-acquired lock");
        return -1;
    }
    if (--l->count == 0) {
        l->owner = 0;
        PyThread_release_lock(l->lock);
    }
    return 0;
}

static PyObject *lock_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "SandboxLock() takes no arguments");
        return NULL;
    }
    LockObject *l = (LockObject *)type->tp_alloc(type, 0);
    if (!l)
        return NULL;
    l->lock = PyThread_allocate_lock();
    if (!l->lock) {
        Py_DECREF(l);
        return PyErr_NoMemory();
    }
    return (PyObject *)l;
}

static void lock_dealloc(LockObject *l)
{
    if (l->lock) {
        if (l->count)
            PyThread_release_lock(l->lock);
        PyThread_free_lock(l->lock);
    }
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *lock_acquire(LockObject *l, PyObject *const *args, Py_ssize_t nargs)
{
    int blocking = 1;
    if (nargs > 1) {
        PyErr_SetString(PyExc_TypeError, "acquire() takes at most 1 argument (blocking)");
        return NULL;
    }
    if (nargs == 1 && (blocking = PyObject_IsTrue(args[0])) < 0)
        return NULL;
    int r = lock_take(l, blocking);
    if (r < 0)
        return NULL;
    return PyBool_FromLong(r);
}

static PyObject *lock_enter(LockObject *l, PyObject *unused)
{
    if (lock_take(l, 1) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *lock_release(LockObject *l, PyObject *const *args, Py_ssize_t nargs)
{
    if (lock_give(l) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *lock_is_owned(LockObject *l, PyObject *unused)
{
    return PyBool_FromLong(l->count && l->owner == PyThread_get_thread_ident());
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_FASTCALL,
     "acquire(blocking=True) -> bool"},
    {"release", (PyCFunction)(void (*)(void))lock_release, METH_FASTCALL, "release()"},
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)(void (*)(void))lock_release, METH_FASTCALL, NULL},
    {"_is_owned", (PyCFunction)lock_is_owned, METH_NOARGS,
     "whether the calling thread holds the lock"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tmebox.runtime._native.SandboxLock",
    .tp_doc = "A sandbox's re-entrant lock (threading.RLock's interface; sb.call's C path "
              "takes it without a Python call).",
    .tp_basicsize = sizeof(LockObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = lock_new,
    .tp_dealloc = (destructor)lock_dealloc,
    .tp_methods = lock_methods,
};

/* -- Export: one export's calling convention ---------------------------------------------- */

/* How a value crosses (api.py builds them from the image's signatures): an integer of a
 * width (8, 16, 32, 64) | KIND_SIGNED, or one of these. KIND_RAW: an untyped export's
 * arguments (any int, its low 64 bits) and result (%rax as a signed 64-bit int). */
enum { KIND_RAW = 0, KIND_VOID = 1, KIND_BOOL = 2, KIND_F32 = 3, KIND_F64 = 4,
       KIND_SIGNED = 0x80 };
#define RESULT_RAW KIND_RAW
#define RESULT_VOID KIND_VOID
#define RESULT_BOOL KIND_BOOL

typedef struct {
    PyObject_HEAD
    uint64_t rip;
    int nparams; /* -1: untyped, else how many */
    int framed;  /* through the call thunk: arguments in a frame (floats need %xmm) */
    uint8_t kind[14];
    uint8_t slot[14]; /* framed: each parameter's frame slot (0-5 integer, 6-13 SSE) */
    uint8_t result;
    double ewma; /* TSC cycles of its recent calls */
} ExportObject;

#define FRAME_SLOTS 14 /* tmebox.trusted.signature.FRAME_SIZE / 8 */
#define FRAME_SSE_SLOT 6

static int valid_int_kind(unsigned k)
{
    unsigned w = k & 0x7f;
    return (k & ~0xffu) == 0 && (w == 8 || w == 16 || w == 32 || w == 64);
}

static int valid_kind(unsigned k, int result, int framed)
{
    if ((result && (k == KIND_VOID || k == KIND_BOOL)) || (framed && (k == KIND_F32 || k == KIND_F64)))
        return 1;
    return valid_int_kind(k);
}

static PyObject *export_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    unsigned long long rip;
    int nparams, result;
    const char *kinds, *slots = "";
    Py_ssize_t nkinds, nslots = 0;
    static char *names[] = {"rip", "nparams", "kinds", "result", "slots", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Kiy#i|y#", names, &rip, &nparams, &kinds,
                                     &nkinds, &result, &slots, &nslots))
        return NULL;
    int framed = nslots > 0 || result == KIND_F32 || result == KIND_F64;
    int ok = nparams >= -1 && nparams <= (framed ? FRAME_SLOTS : 6)
             && nkinds == (nparams < 0 ? 0 : nparams) && (!framed || nslots == nkinds)
             && (!framed || nparams >= 0) && result >= 0
             && (result == KIND_RAW ? nparams < 0 : valid_kind((unsigned)result, 1, framed));
    for (Py_ssize_t i = 0; ok && i < nkinds; i++) {
        unsigned k = (uint8_t)kinds[i];
        int fl = k == KIND_F32 || k == KIND_F64;
        ok = valid_kind(k, 0, framed)
             && (!framed || ((uint8_t)slots[i] < FRAME_SLOTS
                             && (fl == ((uint8_t)slots[i] >= FRAME_SSE_SLOT))));
    }
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "Export: bad calling convention");
        return NULL;
    }
    ExportObject *e = (ExportObject *)type->tp_alloc(type, 0);
    if (!e)
        return NULL;
    e->rip = rip;
    e->nparams = nparams;
    e->framed = framed;
    memcpy(e->kind, kinds, (size_t)nkinds);
    if (framed)
        memcpy(e->slot, slots, (size_t)nslots);
    e->result = (uint8_t)result;
    return (PyObject *)e;
}

static PyObject *export_mean_ns(ExportObject *e, void *unused)
{
    return PyFloat_FromDouble(e->ewma / tsc_per_ns);
}

static PyGetSetDef export_getset[] = {
    {"mean_ns", (getter)export_mean_ns, NULL, "moving average of its calls' duration", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ExportType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tmebox.runtime._native.Export",
    .tp_doc = "Export(rip, nparams, kinds, result, slots=b''): how FastCall calls one export "
              "(slots: framed, through the call thunk).",
    .tp_basicsize = sizeof(ExportObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = export_new,
    .tp_getset = export_getset,
};

static int arg_bits(PyObject *v, unsigned kind, uint64_t *out);
static PyObject *slot_value(unsigned kind, uint64_t v);

/* The pending exception as an instance (traceback kept), or NULL; and back (3.11 has no
 * PyErr_GetRaisedException). */
static PyObject *take_exception(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    if (!t)
        return NULL;
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb && v)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}

static void give_exception(PyObject *v)
{
    PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(v)), v, PyException_GetTraceback(v));
}
static PyObject *result_value(unsigned kind, uint64_t rax);

/* -- Host: one host function, as the guest's import stubs call it ------------------------- */

/* What a host function written in C gets first: where its caller's memory is. A guest
 * pointer p is base + (p & 0xffffffff), readable if lo <= that offset and offset + n <= hi. */
struct tmebox_caller {
    uint64_t base, lo, hi;
};
typedef int64_t (*tmebox_c_host)(const struct tmebox_caller *, int64_t, int64_t, int64_t,
                                 int64_t, int64_t, int64_t);

typedef struct {
    PyObject_HEAD
    PyObject *fn;     /* fn(caller, *args), or NULL for a C function */
    tmebox_c_host cfn;
    int nparams;
    uint8_t kind[14];
    uint8_t slot[14]; /* frame slot of each parameter: 0-5 integer, 6-13 SSE */
    uint8_t result;
    unsigned frame_size; /* bytes of the frame the parameters use */
} HostObject;

static PyObject *host_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    PyObject *fn;
    unsigned long long cfn;
    const char *kinds, *slots;
    Py_ssize_t nk, ns;
    int result;
    static char *names[] = {"fn", "cfn", "kinds", "slots", "result", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OKy#y#i", names, &fn, &cfn, &kinds, &nk,
                                     &slots, &ns, &result))
        return NULL;
    int ok = nk == ns && nk <= 14 && (fn == Py_None ? cfn != 0 : cfn == 0 && PyCallable_Check(fn))
             && (valid_int_kind((unsigned)result) || (result >= KIND_VOID && result <= KIND_F64));
    unsigned size = 0;
    for (Py_ssize_t i = 0; ok && i < nk; i++) {
        unsigned k = (uint8_t)kinds[i], sl = (uint8_t)slots[i];
        int fl = k == KIND_F32 || k == KIND_F64;
        ok = (valid_int_kind(k) || k == KIND_BOOL || fl) && sl < 14 && (fl ? sl >= 6 : sl < 6)
             && (cfn == 0 || !fl);
        if (8 * (sl + 1) > size)
            size = 8 * (sl + 1);
    }
    if (!ok || (cfn && (result == KIND_F32 || result == KIND_F64))) {
        PyErr_SetString(PyExc_ValueError, "Host: bad calling convention");
        return NULL;
    }
    HostObject *h = (HostObject *)type->tp_alloc(type, 0);
    if (!h)
        return NULL;
    h->fn = fn == Py_None ? NULL : Py_NewRef(fn);
    h->cfn = (tmebox_c_host)(uintptr_t)cfn;
    h->nparams = (int)nk;
    memcpy(h->kind, kinds, (size_t)nk);
    memcpy(h->slot, slots, (size_t)nk);
    h->result = (uint8_t)result;
    h->frame_size = size;
    return (PyObject *)h;
}

static void host_dealloc(HostObject *h)
{
    Py_XDECREF(h->fn);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static PyTypeObject HostType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tmebox.runtime._native.Host",
    .tp_doc = "Host(fn, cfn, kinds, slots, result): how FastCall runs one host function.",
    .tp_basicsize = sizeof(HostObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = host_new,
    .tp_dealloc = (destructor)host_dealloc,
};

/* A frame slot read as the parameter's type (the low bytes hold the value). */
static PyObject *slot_value(unsigned kind, uint64_t v)
{
    if (kind == KIND_BOOL)
        return PyBool_FromLong((v & 0xff) != 0);
    if (kind == KIND_F64) {
        double d;
        memcpy(&d, &v, sizeof d);
        return PyFloat_FromDouble(d);
    }
    if (kind == KIND_F32) {
        float x;
        uint32_t lo = (uint32_t)v;
        memcpy(&x, &lo, sizeof x);
        return PyFloat_FromDouble((double)x);
    }
    return result_value(kind, v);
}

/* A host function's result as register bits, when it is the plain case; 0: let api.py
 * convert it (and word its error). */
static int plain_result(unsigned kind, PyObject *r, uint64_t *bits)
{
    if (kind == KIND_VOID) {
        *bits = 0;
        return 1;
    }
    if (kind == KIND_F64 || kind == KIND_F32) {
        if (!PyFloat_CheckExact(r))
            return 0;
        double d = PyFloat_AS_DOUBLE(r);
        if (kind == KIND_F64) {
            memcpy(bits, &d, sizeof d);
            return 1;
        }
        float x = (float)d;
        if (isinf(x) && !isinf(d))
            return 0;
        uint32_t lo;
        memcpy(&lo, &x, sizeof lo);
        *bits = lo;
        return 1;
    }
    if (kind == KIND_BOOL)
        return 0;
    return arg_bits(r, kind, bits);
}

/* -- FastCall ------------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    struct tmebox_ctx *ctx;
    uint64_t rsp, ret, code_lo, code_hi, rw_lo, thunk;
    uint64_t timeout_ns; /* 0: none */
    int ready;           /* parked: the Python side clears it on every other state */
    uint64_t rw_hi;
    int bundle;          /* code+data: resume at bundle starts */
    uint64_t preemptions; /* calls the service tick took the GIL back from */
    LockObject *lock;
    PyObject *exports; /* dict: name -> Export */
    PyObject *nested;  /* list: non-empty while a host function of this sandbox runs */
    PyObject *slow;    /* the whole Python call(name, *args, **kw) */
    PyObject *finish;  /* finish(name, stop) -> %rax as an int, after a stop */
    PyObject *caller;  /* the Sandbox, host functions' first argument */
    PyObject *hosts;   /* tuple of Host, by import index */
    PyObject *host_result; /* host_result(index, value) -> bits: api.py's conversion */
    PyObject *host_error;  /* host_error(index, exc) -> HostError to raise */
    PyObject *host_done;   /* host_done(index, saved): api.py's end of a host call */
} FastObject;

/* An argument as the register it goes in; 0 when the Python path must decide (its error
 * messages, bools, ints out of range). */
static int arg_bits(PyObject *v, unsigned kind, uint64_t *out)
{
    if (!PyLong_CheckExact(v))
        return 0;
    if (kind == KIND_RAW) {
        *out = PyLong_AsUnsignedLongLongMask(v);
        return !PyErr_Occurred();
    }
    unsigned w = kind & 0x7f;
    int overflow;
    long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (x == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        if (kind != 64 || overflow < 0)
            return 0;
        unsigned long long u = PyLong_AsUnsignedLongLong(v);
        if (u == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
        *out = u;
        return 1;
    }
    if (kind & KIND_SIGNED) {
        if (w < 64 && (x < -(1ll << (w - 1)) || x > (1ll << (w - 1)) - 1))
            return 0;
    } else if (x < 0 || (w < 64 && x >= (1ll << w))) {
        return 0;
    }
    *out = (uint64_t)x;
    return 1;
}

/* A float argument's register bits (an int is a fine double), or 0 for the Python path. */
static int float_bits(PyObject *v, unsigned kind, uint64_t *out)
{
    double d;
    if (PyFloat_CheckExact(v)) {
        d = PyFloat_AS_DOUBLE(v);
    } else if (PyLong_CheckExact(v)) {
        d = PyLong_AsDouble(v);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return 0;
        }
    } else {
        return 0;
    }
    if (kind == KIND_F64) {
        memcpy(out, &d, sizeof d);
        return 1;
    }
    float x = (float)d;
    if (isinf(x) && !isinf(d))
        return 0; /* too big for a float: Python's OverflowError */
    uint32_t lo;
    memcpy(&lo, &x, sizeof lo);
    *out = lo;
    return 1;
}

static PyObject *result_value(unsigned kind, uint64_t rax)
{
    if (kind == KIND_F64 || kind == KIND_F32)
        return slot_value(kind, rax);
    if (kind == RESULT_RAW)
        return PyLong_FromLongLong((long long)rax);
    if (kind == RESULT_VOID)
        Py_RETURN_NONE;
    if (kind == RESULT_BOOL)
        return PyBool_FromLong(rax & 0xff);
    unsigned w = kind & 0x7f;
    if (w < 64)
        rax &= (1ull << w) - 1;
    if (kind & KIND_SIGNED) {
        if (w < 64 && rax >> (w - 1))
            rax |= ~0ull << w;
        return PyLong_FromLongLong((long long)rax);
    }
    return PyLong_FromUnsignedLongLong(rax);
}

/* One stretch of sandbox code: the call itself (resume_with NULL) or its continuation after
 * a host function; returns the stop reason. Short ones hold the GIL (file comment). */
static int run_step(FastObject *f, ExportObject *e, uint64_t rip, uint64_t rsp,
                    const uint64_t *a, const int64_t *resume_with)
{
    struct tmebox_ctx *c = f->ctx;
    int hold = e->ewma < GIL_HOLD_NS * tsc_per_ns;
    PyThreadState *ts = NULL;
    if (hold)
        c->preemptible = 1;
    else
        ts = PyEval_SaveThread();
    int r = resume_with
                ? tmebox_resume(c, *resume_with, f->bundle, f->rw_lo, f->rw_hi)
                : tmebox_call(c, rip, rsp, f->ret, a[0], a[1], a[2], a[3], a[4], a[5]);
    c->preemptible = 0;
    if (r == TMEBOX_REASON_PREEMPTED) {
        /* it held the GIL and ran long: the rest without (never preempted again) */
        f->preemptions++;
        ts = PyEval_SaveThread();
        r = tmebox_continue(c, f->code_lo, f->code_hi);
    }
    if (ts)
        PyEval_RestoreThread(ts);
    c->reason = (uint32_t)r;
    return r;
}

/* The host function the guest called (runtime call SYS_TMEBOX_HOST + index): its result's
 * register bits in *bits, or -1 with an exception set. */
static int call_host(FastObject *f, Py_ssize_t index, int64_t *bits)
{
    struct tmebox_ctx *c = f->ctx;
    HostObject *h = (HostObject *)PyTuple_GET_ITEM(f->hosts, index);
    uint64_t off = (uint32_t)c->gpr[TMEBOX_RDI];
    if (h->frame_size && (off < f->code_lo || off + h->frame_size > f->rw_hi)) {
        *bits = -EFAULT; /* not a stub's frame: the guest made the call by hand */
        return 0;
    }
    const uint64_t *frame = (const uint64_t *)(uintptr_t)(f->ctx->base + off);
    if (h->cfn) {
        struct tmebox_caller who = {c->base, f->code_lo, f->rw_hi};
        int64_t a[6] = {0};
        for (int i = 0; i < h->nparams; i++) {
            uint64_t v = frame[h->slot[i]];
            unsigned k = h->kind[i], w = k & 0x7f;
            if (k == KIND_BOOL)
                v = (v & 0xff) != 0;
            else if (w < 64)
                v = (k & KIND_SIGNED) && (v >> (w - 1) & 1) ? v | ~0ull << w
                                                              : v & ((1ull << w) - 1);
            a[i] = (int64_t)v;
        }
        *bits = h->cfn(&who, a[0], a[1], a[2], a[3], a[4], a[5]);
        return 0;
    }
    PyObject *argv[15];
    argv[0] = f->caller;
    int n = 0, rc = -1;
    for (; n < h->nparams; n++)
        if (!(argv[n + 1] = slot_value(h->kind[n], frame[h->slot[n]])))
            goto out;
    PyObject *mark = PyList_New(2);
    if (!mark)
        goto out;
    PyList_SET_ITEM(mark, 0, Py_NewRef(Py_None));
    PyList_SET_ITEM(mark, 1, Py_NewRef(Py_None));
    if (PyList_Append(f->nested, mark) < 0) {
        Py_DECREF(mark);
        goto out;
    }
    PyObject *r = PyObject_Vectorcall(h->fn, argv, (size_t)n + 1, NULL);
    uint64_t u = 0;
    int ok = r && plain_result(h->result, r, &u);
    if (r && !ok) {
        PyObject *idx = PyLong_FromSsize_t(index);
        PyObject *conv = idx ? PyObject_CallFunctionObjArgs(f->host_result, idx, r, NULL) : NULL;
        Py_XDECREF(idx);
        if (conv) {
            u = PyLong_AsUnsignedLongLongMask(conv);
            Py_DECREF(conv);
            ok = !PyErr_Occurred();
        }
    }
    Py_XDECREF(r);
    if (!ok) {
        /* a HostError whose __cause__ is what the function (or its result) raised */
        PyObject *exc = take_exception();
        PyObject *idx = PyLong_FromSsize_t(index);
        PyObject *err = idx && exc ? PyObject_CallFunctionObjArgs(f->host_error, idx, exc, NULL)
                                   : NULL;
        Py_XDECREF(idx);
        Py_XDECREF(exc);
        if (err)
            give_exception(err);
    }
    /* this host call's entry off the list; api.py finishes it if a call back into the
       sandbox saved the guest's state, or the sandbox is no longer parked */
    Py_ssize_t last = PyList_GET_SIZE(f->nested) - 1;
    PyObject *saved = Py_NewRef(PyList_GET_ITEM(mark, 0));
    PyList_SetSlice(f->nested, last, last + 1, NULL);
    Py_DECREF(mark);
    if (saved != Py_None || !f->ready) {
        PyObject *exc = take_exception();
        PyObject *idx = PyLong_FromSsize_t(index);
        PyObject *d = idx ? PyObject_CallFunctionObjArgs(f->host_done, idx, saved, NULL) : NULL;
        Py_XDECREF(idx);
        if (exc) {
            Py_XDECREF(d);
            PyErr_Clear();
            give_exception(exc); /* the host function's error comes first */
            ok = 0;
        } else if (!d) {
            ok = 0;
        } else {
            Py_DECREF(d);
        }
    }
    Py_DECREF(saved);
    if (ok) {
        *bits = (int64_t)u;
        rc = 0;
    }
out:
    for (int i = 0; i < n; i++)
        Py_DECREF(argv[i + 1]);
    return rc;
}

static PyObject *fast_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                                 PyObject *kwnames)
{
    FastObject *f = (FastObject *)self;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    LockObject *l = f->lock;
    if (kwnames || nargs < 1 || !f->ready || PyList_GET_SIZE(f->nested) || l->count)
        goto slow;
    ExportObject *e = (ExportObject *)PyDict_GetItemWithError(f->exports, args[0]);
    if (!e) {
        if (PyErr_Occurred())
            return NULL;
        goto slow;
    }
    Py_ssize_t n = nargs - 1;
    if (e->nparams < 0 ? n > 6 : n != e->nparams)
        goto slow;
    uint64_t a[6] = {0}, frame[FRAME_SLOTS] = {0};
    uint64_t rip = e->rip, rsp = f->rsp, at = 0;
    if (e->framed) {
        /* as api.py's _call_framed: the frame below the call, the thunk loads it */
        if (!f->thunk)
            goto slow;
        for (Py_ssize_t i = 0; i < n; i++) {
            unsigned k = e->kind[i];
            if (!(k == KIND_F32 || k == KIND_F64 ? float_bits(args[i + 1], k, &frame[e->slot[i]])
                                                 : arg_bits(args[i + 1], k, &frame[e->slot[i]])))
                goto slow;
        }
        at = (f->rsp - 8 * FRAME_SLOTS) & ~15ull;
        a[0] = at;
        a[1] = e->rip;
        rip = f->thunk;
        rsp = at - 16;
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            if (!arg_bits(args[i + 1], e->nparams < 0 ? KIND_RAW : e->kind[i], &a[i]))
                goto slow;
    }
    if (!PyThread_acquire_lock(l->lock, NOWAIT_LOCK))
        goto slow;
    if (at)
        memcpy((void *)(uintptr_t)at, frame, sizeof frame);
    l->owner = PyThread_get_thread_ident();
    l->count = 1;
    Py_INCREF(e);
    Py_INCREF(self);
    /* none: clear whatever limit an earlier call left */
    f->ctx->deadline_ns = f->timeout_ns ? tmebox_monotonic_ns() + f->timeout_ns : 0;
    uint64_t t0 = __rdtsc();
    PyObject *out = NULL;
    int stop = run_step(f, e, rip, rsp, a, NULL);
    struct tmebox_ctx *c = f->ctx;
    Py_ssize_t nhosts = PyTuple_GET_SIZE(f->hosts);
    while (stop == TMEBOX_REASON_SYSCALL && c->gpr[TMEBOX_RAX] - SYS_TMEBOX_HOST < (uint64_t)nhosts) {
        int64_t bits;
        if (call_host(f, (Py_ssize_t)(c->gpr[TMEBOX_RAX] - SYS_TMEBOX_HOST), &bits) < 0)
            goto done;
        stop = run_step(f, e, 0, 0, NULL, &bits);
    }
    double dt = (double)(__rdtsc() - t0);
    e->ewma += (dt - e->ewma) * 0.125;
    uint64_t rax = c->gpr[TMEBOX_RAX];
    if (stop != TMEBOX_REASON_RETURN) {
        /* Runtime calls, host functions, faults, timeouts: api.py decides, under the lock
           this thread holds (it is re-entrant). */
        PyObject *stop = PyLong_FromLong((long)f->ctx->reason);
        PyObject *r = stop ? PyObject_CallFunctionObjArgs(f->finish, args[0], stop, NULL)
                           : NULL;
        Py_XDECREF(stop);
        if (!r)
            goto done;
        rax = PyLong_AsUnsignedLongLongMask(r);
        Py_DECREF(r);
        if (PyErr_Occurred())
            goto done;
    }
    if (at && (e->result == KIND_F32 || e->result == KIND_F64))
        rax = ((volatile uint64_t *)(uintptr_t)at)[FRAME_SSE_SLOT];
    out = result_value(e->result, rax);
done:
    if (lock_give(l) < 0)
        Py_CLEAR(out);
    Py_DECREF(e);
    Py_DECREF(self);
    return out;
slow:
    return PyObject_Vectorcall(f->slow, args, nargsf, kwnames);
}

static PyObject *fast_new(PyTypeObject *type, PyObject *args, PyObject *kw)
{
    unsigned long long ctx, rsp, ret, code_lo, code_hi, rw_lo, rw_hi, thunk;
    int bundle;
    PyObject *lock, *exports, *nested, *slow, *finish, *caller, *hosts, *host_result,
        *host_error, *host_done;
    static char *names[] = {"ctx", "rsp", "ret", "thunk", "code_lo", "code_hi", "rw_lo",
                            "rw_hi", "bundle", "lock", "exports", "nested", "slow", "finish", "caller",
                            "hosts", "host_result", "host_error", "host_done", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kw, "KKKKKKKKpO!O!O!OOOO!OOO", names, &ctx, &rsp,
                                     &ret, &thunk, &code_lo, &code_hi, &rw_lo, &rw_hi, &bundle,
                                     &LockType, &lock, &PyDict_Type, &exports, &PyList_Type,
                                     &nested, &slow, &finish, &caller, &PyTuple_Type, &hosts,
                                     &host_result, &host_error, &host_done))
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(hosts); i++)
        if (!PyObject_TypeCheck(PyTuple_GET_ITEM(hosts, i), &HostType)) {
            PyErr_SetString(PyExc_TypeError, "FastCall: hosts must be Host objects");
            return NULL;
        }
    if (!ctx || !PyCallable_Check(slow) || !PyCallable_Check(finish)
        || !PyCallable_Check(host_result) || !PyCallable_Check(host_error)
        || !PyCallable_Check(host_done) || !(code_lo < code_hi && code_hi <= rw_lo
                                             && rw_lo < rw_hi && rw_hi <= 0xffffffffull)) {
        PyErr_SetString(PyExc_ValueError, "FastCall: bad context, layout or callbacks");
        return NULL;
    }
    FastObject *f = (FastObject *)type->tp_alloc(type, 0);
    if (!f)
        return NULL;
    f->vectorcall = fast_vectorcall;
    f->ctx = (struct tmebox_ctx *)(uintptr_t)ctx;
    f->rsp = rsp;
    f->ret = ret;
    f->code_lo = code_lo;
    f->code_hi = code_hi;
    f->rw_lo = rw_lo;
    f->thunk = thunk;
    f->rw_hi = rw_hi;
    f->bundle = bundle;
    f->lock = (LockObject *)Py_NewRef(lock);
    f->caller = Py_NewRef(caller);
    f->hosts = Py_NewRef(hosts);
    f->host_result = Py_NewRef(host_result);
    f->host_error = Py_NewRef(host_error);
    f->host_done = Py_NewRef(host_done);
    f->exports = Py_NewRef(exports);
    f->nested = Py_NewRef(nested);
    f->slow = Py_NewRef(slow);
    f->finish = Py_NewRef(finish);
    return (PyObject *)f;
}

static int fast_traverse(FastObject *f, visitproc visit, void *arg)
{
    Py_VISIT(f->lock);
    Py_VISIT(f->exports);
    Py_VISIT(f->nested);
    Py_VISIT(f->slow);
    Py_VISIT(f->finish);
    Py_VISIT(f->caller);
    Py_VISIT(f->hosts);
    Py_VISIT(f->host_result);
    Py_VISIT(f->host_error);
    Py_VISIT(f->host_done);
    return 0;
}

static int fast_clear(FastObject *f)
{
    f->ready = 0;
    Py_CLEAR(f->lock);
    Py_CLEAR(f->exports);
    Py_CLEAR(f->nested);
    Py_CLEAR(f->slow);
    Py_CLEAR(f->finish);
    Py_CLEAR(f->caller);
    Py_CLEAR(f->hosts);
    Py_CLEAR(f->host_result);
    Py_CLEAR(f->host_error);
    Py_CLEAR(f->host_done);
    return 0;
}

static void fast_dealloc(FastObject *f)
{
    PyObject_GC_UnTrack(f);
    fast_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static PyObject *fast_get_ready(FastObject *f, void *unused)
{
    return PyBool_FromLong(f->ready);
}

static int fast_set_ready(FastObject *f, PyObject *v, void *unused)
{
    int r = v ? PyObject_IsTrue(v) : 0;
    if (r < 0)
        return -1;
    /* a cleared object (its references gone) can never be ready again */
    f->ready = r && f->lock;
    return 0;
}

static PyObject *fast_get_timeout(FastObject *f, void *unused)
{
    if (!f->timeout_ns)
        Py_RETURN_NONE;
    return PyFloat_FromDouble((double)f->timeout_ns / 1e9);
}

static int fast_set_timeout(FastObject *f, PyObject *v, void *unused)
{
    if (!v || v == Py_None) {
        f->timeout_ns = 0;
        return 0;
    }
    double s = PyFloat_AsDouble(v);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (!(s > 0) || s > 1e9) {
        PyErr_SetString(PyExc_ValueError, "timeout must be a positive number of seconds");
        return -1;
    }
    f->timeout_ns = (uint64_t)(s * 1e9);
    if (!f->timeout_ns)
        f->timeout_ns = 1;
    return 0;
}

static PyGetSetDef fast_getset[] = {
    {"ready", (getter)fast_get_ready, (setter)fast_set_ready,
     "whether calls may take the C path (the sandbox is parked)", NULL},
    {"timeout", (getter)fast_get_timeout, (setter)fast_set_timeout,
     "the sandbox's timeout in seconds (None: none)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef fast_members[] = {
    {"preemptions", T_ULONGLONG, offsetof(FastObject, preemptions), READONLY,
     "calls that held the GIL and ran past a service tick (then went on without it)"},
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(FastObject, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyObject *fast_call(PyObject *self, PyObject *args, PyObject *kw)
{
    return PyVectorcall_Call(self, args, kw);
}

static PyTypeObject FastType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "tmebox.runtime._native.FastCall",
    .tp_doc = "call(name, *args): call an exported function of the sandbox (see "
              "Sandbox.call in docs/runtime.md).",
    .tp_basicsize = sizeof(FastObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = fast_new,
    .tp_call = fast_call,
    .tp_vectorcall_offset = offsetof(FastObject, vectorcall),
    .tp_traverse = (traverseproc)fast_traverse,
    .tp_clear = (inquiry)fast_clear,
    .tp_dealloc = (destructor)fast_dealloc,
    .tp_getset = fast_getset,
    .tp_members = fast_members,
};

/* -- registration ---------------------------------------------------------------------- */

/* A process started from this thread inherits its signal mask, and the lazily blocked one
 * lasts until the next service tick: give the host's back first. Python audits every way
 * it starts one (a C hook: it runs for every audited event). */
static int on_audit(const char *event, PyObject *args, void *unused)
{
    if ((event[0] == 'o' && (!strcmp(event, "os.fork") || !strcmp(event, "os.forkpty")
                             || !strcmp(event, "os.exec") || !strcmp(event, "os.posix_spawn")
                             || !strcmp(event, "os.spawn") || !strcmp(event, "os.system")))
        || !strcmp(event, "subprocess.Popen"))
        tmebox_release_signals();
    return 0;
}

static void calibrate_tsc(void)
{
    uint64_t n0 = tmebox_monotonic_ns(), c0 = __rdtsc(), n1;
    do
        n1 = tmebox_monotonic_ns();
    while (n1 - n0 < 200000);
    uint64_t c1 = __rdtsc();
    if (c1 > c0)
        tsc_per_ns = (double)(c1 - c0) / (double)(n1 - n0);
}

int tmebox_fast_register(void)
{
    /* cffi calls this without the GIL; the types go into the cffi module itself */
    PyGILState_STATE g = PyGILState_Ensure();
    int rc = -1;
    PyObject *m = NULL;
    if (PyType_Ready(&LockType) < 0 || PyType_Ready(&ExportType) < 0
        || PyType_Ready(&HostType) < 0 || PyType_Ready(&FastType) < 0)
        goto out;
    m = PyImport_ImportModule("tmebox.runtime._native");
    if (!m || PyModule_AddObjectRef(m, "SandboxLock", (PyObject *)&LockType) < 0
        || PyModule_AddObjectRef(m, "Export", (PyObject *)&ExportType) < 0
        || PyModule_AddObjectRef(m, "Host", (PyObject *)&HostType) < 0
        || PyModule_AddObjectRef(m, "FastCall", (PyObject *)&FastType) < 0)
        goto out;
    if (PySys_AddAuditHook(on_audit, NULL) < 0)
        goto out;
    calibrate_tsc();
    rc = 0;
out:
    if (rc)
        PyErr_Print();
    Py_XDECREF(m);
    PyGILState_Release(g);
    return rc;
}
