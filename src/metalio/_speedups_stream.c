/* metalio._speedups, the stream half: the source base type and its try_* calls.
 *
 * Owns: StreamCore, the C layout of the slots metalio._fdio.FdState names
 * (_fd, _rearm, _epoch, _rmark, _wmark, _polls), and EpochCore, the C
 * version of metalio._readiness.Epoch (now, advance()).  The four stream calls,
 * try_read, try_read_into, try_write and try_writev, are exported as method
 * descriptors of StreamCore rather than put in its type: the stream classes
 * bind them by name (try_read = _speedups.try_read), exactly as the
 * pure-Python classes bind metalio._fdio.fd_try_read, so a datagram socket
 * or a pipe's write end, which derive from the same base, do not grow a
 * try_read.
 *
 * The rules are metalio._fdio's, which stays the reference: read the epoch
 * before the system call; a drained mark equal to it answers None without
 * one; a would-block or a short transfer stores the epoch read before the
 * call as the mark; a would-block calls the _rearm hook when one is set; an
 * untracked source (_epoch None) always makes the system call.  The
 * readiness NEVER epoch holds NaN, which equals no mark.
 *
 * Must not know: registries, backends, events.  Who sets _epoch and the
 * marks, and when, is metalio._readiness's business.
 */

#include "_speedups.h"

#include <stddef.h>

#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_INT T_INT
#define Py_T_DOUBLE T_DOUBLE
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

typedef struct {
    PyObject_HEAD
    int fd;            /* -1 once closed: the kernel then answers EBADF */
    int polls;         /* how many Polls the source is registered with */
    PyObject *rearm;   /* None, or the hook an emulating backend set */
    PyObject *epoch;   /* None (untracked), or the tracking Poll's epoch */
    double rmark;      /* the epoch at which reading was seen drained */
    double wmark;      /* the epoch at which writing was seen drained */
    Py_ssize_t last_read; /* bytes the last try_read returned: picks its buffer */
} StreamCore;

/* try_read's two ways to fill a bytes object.  Allocating the n bytes asked
 * for and shrinking the object to what came costs two trips through the
 * allocator whatever the size; reading into a per-thread scratch buffer and
 * copying what came costs one small allocation and a copy that grows with
 * the data.  The scratch wins for small reads (a request/response server's
 * usual case), the allocation for bulk ones, and the size of the previous
 * read on the same source is the guess.  The scratch is per thread, so
 * threads never share it, and it is copied out before any Python code can
 * run on the thread again. */
#define METALIO_SCRATCH_SIZE ((Py_ssize_t)65536)
#define METALIO_SMALL_READ ((Py_ssize_t)4096)
static _Thread_local char scratch[METALIO_SCRATCH_SIZE];

typedef struct {
    PyObject_HEAD
    double now;              /* changes whenever a wait of the tracking Poll returns */
    unsigned long long taken; /* the last value advance() took */
} EpochCore;

/* The direction bits, as metalio._fdio.READ and WRITE. */
#define DIRECTION_READ 1
#define DIRECTION_WRITE 2

/* ---- the state a call reads first ------------------------------------ */

/* What a call knows before its system call. */
typedef struct {
    int fd;
    int tracked;
    double now;
    double mark;
} Before;

/* Read the descriptor, the epoch's value and the direction's mark.  An
 * epoch that is not an EpochCore (a test's stand-in) is asked for its
 * ``now`` attribute.  0, or -1 with an exception. */
static int
before_call(StreamCore *self, PyTypeObject *epoch_type, int direction, Before *out)
{
    PyObject *other = NULL;
    out->tracked = 0;
    out->now = -1.0;
    METALIO_LOCK((PyObject *)self);
    out->fd = self->fd;
    PyObject *epoch = self->epoch;
    if (epoch != NULL && epoch != Py_None) {
        out->tracked = 1;
        if (PyObject_TypeCheck(epoch, epoch_type)) {
            METALIO_LOAD_DOUBLE(&((EpochCore *)epoch)->now, &out->now);
        }
        else {
            other = Py_NewRef(epoch);
        }
    }
    METALIO_LOAD_DOUBLE(direction == DIRECTION_READ ? &self->rmark : &self->wmark, &out->mark);
    METALIO_UNLOCK();
    if (other != NULL) {
        PyObject *now = PyObject_GetAttrString(other, "now");
        Py_DECREF(other);
        if (now == NULL) {
            return -1;
        }
        out->now = PyFloat_AsDouble(now);
        Py_DECREF(now);
        if (out->now == -1.0 && PyErr_Occurred()) {
            return -1;
        }
    }
    return 0;
}

/* True when the direction is known drained: nothing can be read (written)
 * until a wait returns.  NaN, NEVER's value, equals nothing. */
static inline int
known_drained(const Before *before)
{
    return before->tracked && before->mark == before->now;
}

static inline void
mark_drained(StreamCore *self, int direction, const Before *before)
{
    if (before->tracked) {
        METALIO_STORE_DOUBLE(direction == DIRECTION_READ ? &self->rmark : &self->wmark,
                             before->now);
    }
}

/* The would-block funnel (metalio._fdio.would_block): mark, then call the
 * re-arm hook if a backend set one.  0, or -1 if the hook raised. */
static int
would_block(StreamCore *self, int direction, const Before *before)
{
    PyObject *rearm, *result, *arg;
    mark_drained(self, direction, before);
    METALIO_LOCK((PyObject *)self);
    rearm = self->rearm;
    Py_XINCREF(rearm);
    METALIO_UNLOCK();
    if (rearm == NULL || rearm == Py_None) {
        Py_XDECREF(rearm);
        return 0;
    }
    arg = PyLong_FromLong(direction);
    if (arg == NULL) {
        Py_DECREF(rearm);
        return -1;
    }
    result = PyObject_CallOneArg(rearm, arg);
    Py_DECREF(arg);
    Py_DECREF(rearm);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* ---- arguments --------------------------------------------------------- */

/* At most one argument, positional or by the keyword *name*; *out* keeps
 * its default when none is given.  0, or -1 with TypeError. */
static int
one_argument(const char *method, const char *name, int required, PyObject *const *args,
             Py_ssize_t nargs, PyObject *kwnames, PyObject **out)
{
    Py_ssize_t nkw = kwnames == NULL ? 0 : PyTuple_GET_SIZE(kwnames);
    if (nargs + nkw > 1) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most 1 argument (%zd given)", method,
                     nargs + nkw);
        return -1;
    }
    if (nkw == 1) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, 0);
        if (PyUnicode_CompareWithASCIIString(key, name) != 0) {
            PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                         method, key);
            return -1;
        }
        *out = args[0];
        return 0;
    }
    if (nargs == 1) {
        *out = args[0];
        return 0;
    }
    if (required) {
        PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", method, name);
        return -1;
    }
    return 0;
}

static PyTypeObject *
epoch_type_of(PyTypeObject *defining_class)
{
    metalio_state *state = (metalio_state *)PyType_GetModuleState(defining_class);
    return (PyTypeObject *)state->epoch_type;
}

/* ---- the four calls ----------------------------------------------------- */

static PyObject *
stream_try_read(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames)
{
    StreamCore *self = (StreamCore *)op;
    PyObject *arg = NULL, *bytes;
    Py_ssize_t size = 65536, got;
    Before before;

    if (one_argument("try_read", "n", 0, args, nargs, kwnames, &arg) < 0 ||
        (arg != NULL && metalio_size_from_object(arg, &size) < 0) ||
        before_call(self, epoch_type_of(defining_class), DIRECTION_READ, &before) < 0) {
        return NULL;
    }
    if (known_drained(&before)) {
        Py_RETURN_NONE;
    }
    if (size <= METALIO_SCRATCH_SIZE && self->last_read <= METALIO_SMALL_READ) {
        got = metalio_do_read(before.fd, scratch, (size_t)size);
        if (got < 0) {
            if (got == METALIO_WOULD_BLOCK && would_block(self, DIRECTION_READ, &before) == 0) {
                Py_RETURN_NONE;
            }
            return NULL;
        }
        self->last_read = got;
        if (got > 0 && got < size) {
            mark_drained(self, DIRECTION_READ, &before); /* a short read emptied the buffer */
        }
        return PyBytes_FromStringAndSize(scratch, got);
    }
    bytes = PyBytes_FromStringAndSize(NULL, size);
    if (bytes == NULL) {
        return NULL;
    }
    got = metalio_do_read(before.fd, PyBytes_AS_STRING(bytes), (size_t)size);
    if (got < 0) {
        Py_DECREF(bytes);
        if (got == METALIO_WOULD_BLOCK && would_block(self, DIRECTION_READ, &before) == 0) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    self->last_read = got;
    if (got != size) {
        if (got > 0) {
            mark_drained(self, DIRECTION_READ, &before); /* a short read emptied the buffer */
        }
        if (_PyBytes_Resize(&bytes, got) < 0) {
            return NULL; /* _PyBytes_Resize released the object */
        }
    }
    return bytes;
}

static PyObject *
stream_try_read_into(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                     Py_ssize_t nargs, PyObject *kwnames)
{
    StreamCore *self = (StreamCore *)op;
    PyObject *buffer = NULL;
    Py_buffer view;
    Py_ssize_t got;
    Before before;

    if (one_argument("try_read_into", "buffer", 1, args, nargs, kwnames, &buffer) < 0 ||
        before_call(self, epoch_type_of(defining_class), DIRECTION_READ, &before) < 0) {
        return NULL;
    }
    if (known_drained(&before)) {
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_SetString(PyExc_TypeError, "try_read_into needs a writable buffer");
        }
        return NULL;
    }
    got = metalio_do_read(before.fd, view.buf, (size_t)view.len);
    if (got == 0 && view.len == 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        "try_read_into needs a non-empty buffer (0 would mean end of stream)");
        return NULL;
    }
    if (got > 0 && got < view.len) {
        mark_drained(self, DIRECTION_READ, &before);
    }
    PyBuffer_Release(&view);
    if (got >= 0) {
        return PyLong_FromSsize_t(got);
    }
    if (got == METALIO_WOULD_BLOCK && would_block(self, DIRECTION_READ, &before) == 0) {
        Py_RETURN_NONE;
    }
    return NULL;
}

static PyObject *
stream_try_write(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                 Py_ssize_t nargs, PyObject *kwnames)
{
    StreamCore *self = (StreamCore *)op;
    PyObject *data = NULL;
    Py_buffer view;
    Py_ssize_t put;
    Before before;

    if (one_argument("try_write", "data", 1, args, nargs, kwnames, &data) < 0 ||
        before_call(self, epoch_type_of(defining_class), DIRECTION_WRITE, &before) < 0) {
        return NULL;
    }
    if (known_drained(&before)) {
        Py_RETURN_NONE;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    put = metalio_do_write(before.fd, view.buf, (size_t)view.len);
    if (put >= 0 && put < view.len) {
        mark_drained(self, DIRECTION_WRITE, &before); /* a short write filled the buffer */
    }
    PyBuffer_Release(&view);
    if (put >= 0) {
        return PyLong_FromSsize_t(put);
    }
    if (put == METALIO_WOULD_BLOCK && would_block(self, DIRECTION_WRITE, &before) == 0) {
        Py_RETURN_NONE;
    }
    return NULL;
}

static PyObject *
stream_try_writev(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                  Py_ssize_t nargs, PyObject *kwnames)
{
    StreamCore *self = (StreamCore *)op;
    PyObject *buffers = NULL;
    Py_ssize_t put;
    Before before;

    if (one_argument("try_writev", "buffers", 1, args, nargs, kwnames, &buffers) < 0 ||
        before_call(self, epoch_type_of(defining_class), DIRECTION_WRITE, &before) < 0) {
        return NULL;
    }
    if (known_drained(&before)) {
        Py_RETURN_NONE;
    }
    /* A partial gather-write does not mark, as in the reference: the total
     * offered is not worth computing; the would-block that follows marks. */
    put = metalio_gather_write(before.fd, buffers);
    if (put >= 0) {
        return PyLong_FromSsize_t(put);
    }
    if (put == METALIO_WOULD_BLOCK && would_block(self, DIRECTION_WRITE, &before) == 0) {
        Py_RETURN_NONE;
    }
    return NULL;
}

#define STREAM_CALL (METH_METHOD | METH_FASTCALL | METH_KEYWORDS)

static PyMethodDef stream_calls[] = {
    {"try_read", (PyCFunction)(void (*)(void))stream_try_read, STREAM_CALL,
     PyDoc_STR("try_read(n=65536)\n--\n\n"
               "Read at most n bytes: data, b'' at end of stream, None if none yet\n"
               "(maybe without a system call: see metalio._readiness).")},
    {"try_read_into", (PyCFunction)(void (*)(void))stream_try_read_into, STREAM_CALL,
     PyDoc_STR("try_read_into(buffer)\n--\n\n"
               "Read into the writable buffer: bytes read, 0 at end of stream, None if\n"
               "nothing yet.")},
    {"try_write", (PyCFunction)(void (*)(void))stream_try_write, STREAM_CALL,
     PyDoc_STR("try_write(data)\n--\n\n"
               "Write some of data: the number of bytes taken (maybe fewer), None if none.")},
    {"try_writev", (PyCFunction)(void (*)(void))stream_try_writev, STREAM_CALL,
     PyDoc_STR("try_writev(buffers)\n--\n\n"
               "Gather-write a sequence of bytes-like objects in one writev(2): the total\n"
               "taken, None if none.  At most IOV_MAX buffers go in one call.")},
    {NULL, NULL, 0, NULL},
};

/* ---- StreamCore ---------------------------------------------------------- */

static PyObject *
stream_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    StreamCore *self = (StreamCore *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->fd = -1;
    self->polls = 0;
    self->rearm = Py_NewRef(Py_None);
    self->epoch = Py_NewRef(Py_None);
    self->rmark = self->wmark = -1.0;
    self->last_read = 0;
    return (PyObject *)self;
}

static int
stream_traverse(PyObject *op, visitproc visit, void *arg)
{
    StreamCore *self = (StreamCore *)op;
    Py_VISIT(Py_TYPE(op));
    Py_VISIT(self->rearm);
    Py_VISIT(self->epoch);
    return 0;
}

static int
stream_clear(PyObject *op)
{
    StreamCore *self = (StreamCore *)op;
    Py_CLEAR(self->rearm);
    Py_CLEAR(self->epoch);
    return 0;
}

static void
stream_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    PyObject_GC_UnTrack(op);
    (void)stream_clear(op);
    type->tp_free(op);
    Py_DECREF(type);
}

static PyMemberDef stream_members[] = {
    {"_fd", Py_T_INT, offsetof(StreamCore, fd), 0, PyDoc_STR("the descriptor, -1 once closed")},
    {"_polls", Py_T_INT, offsetof(StreamCore, polls), 0,
     PyDoc_STR("how many Polls the source is registered with")},
    {"_rearm", Py_T_OBJECT_EX, offsetof(StreamCore, rearm), 0,
     PyDoc_STR("the emulating backend's re-arm hook, or None")},
    {"_epoch", Py_T_OBJECT_EX, offsetof(StreamCore, epoch), 0,
     PyDoc_STR("the tracking Poll's epoch, or None while untracked")},
    {"_rmark", Py_T_DOUBLE, offsetof(StreamCore, rmark), 0,
     PyDoc_STR("the epoch at which reading was seen drained")},
    {"_wmark", Py_T_DOUBLE, offsetof(StreamCore, wmark), 0,
     PyDoc_STR("the epoch at which writing was seen drained")},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot stream_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("The C layout of metalio._fdio.FdState: the base of every "
                                  "metalio source when the C core is in use.")},
    {Py_tp_new, (void *)stream_new},
    {Py_tp_dealloc, (void *)stream_dealloc},
    {Py_tp_traverse, (void *)stream_traverse},
    {Py_tp_clear, (void *)stream_clear},
    {Py_tp_members, (void *)stream_members},
    {0, NULL},
};

static PyType_Spec stream_spec = {
    "metalio._speedups.StreamCore",
    (int)sizeof(StreamCore),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    stream_slots,
};

/* ---- EpochCore ----------------------------------------------------------- */

static PyObject *
epoch_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kwds))
{
    EpochCore *self = (EpochCore *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->now = 0.0;
    self->taken = 0;
    return (PyObject *)self;
}

static void
epoch_dealloc(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    type->tp_free(op);
    Py_DECREF(type);
}

/* Epoch.advance: take the next value and make it the epoch.  Two pollers
 * never take the same value (an atomic add without the GIL; the GIL makes
 * the method atomic otherwise), and values are never reused, so a mark made
 * at a value another poller overwrote never matches again. */
static inline void
advance(EpochCore *self)
{
#ifdef Py_GIL_DISABLED
    unsigned long long value = __atomic_add_fetch(&self->taken, 1, __ATOMIC_RELAXED);
#else
    unsigned long long value = ++self->taken;
#endif
    METALIO_STORE_DOUBLE(&self->now, (double)value);
}

static PyObject *
epoch_advance(PyObject *op, PyObject *Py_UNUSED(unused))
{
    advance((EpochCore *)op);
    Py_RETURN_NONE;
}

int
metalio_epoch_advance(PyObject *module, PyObject *epoch)
{
    metalio_state *state;
    PyObject *result;
    if (epoch == Py_None) {
        return 0;
    }
    state = (metalio_state *)PyModule_GetState(module);
    if (state != NULL && PyObject_TypeCheck(epoch, (PyTypeObject *)state->epoch_type)) {
        advance((EpochCore *)epoch);
        return 0;
    }
    result = PyObject_CallMethod(epoch, "advance", NULL);
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

static PyMethodDef epoch_methods[] = {
    {"advance", (PyCFunction)epoch_advance, METH_NOARGS,
     PyDoc_STR("advance()\n--\n\nA wait returned: no mark made before now can match any more.")},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef epoch_members[] = {
    {"now", Py_T_DOUBLE, offsetof(EpochCore, now), 0,
     PyDoc_STR("the value marks are compared with")},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot epoch_slots[] = {
    {Py_tp_doc, (void *)PyDoc_STR("The C layout of metalio._readiness.Epoch.")},
    {Py_tp_new, (void *)epoch_new},
    {Py_tp_dealloc, (void *)epoch_dealloc},
    {Py_tp_members, (void *)epoch_members},
    {Py_tp_methods, (void *)epoch_methods},
    {0, NULL},
};

static PyType_Spec epoch_spec = {
    "metalio._speedups.EpochCore",
    (int)sizeof(EpochCore),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    epoch_slots,
};

/* ---- the module's part ----------------------------------------------------- */

int
metalio_state_traverse(PyObject *module, visitproc visit, void *arg)
{
    metalio_state *state = (metalio_state *)PyModule_GetState(module);
    if (state != NULL) {
        Py_VISIT(state->stream_type);
        Py_VISIT(state->epoch_type);
    }
    return 0;
}

int
metalio_state_clear(PyObject *module)
{
    metalio_state *state = (metalio_state *)PyModule_GetState(module);
    if (state != NULL) {
        Py_CLEAR(state->stream_type);
        Py_CLEAR(state->epoch_type);
    }
    return 0;
}

void
metalio_state_free(void *module)
{
    (void)metalio_state_clear((PyObject *)module);
}

static int
add_type(PyObject *module, const char *name, PyType_Spec *spec, PyObject **slot)
{
    PyObject *type = PyType_FromModuleAndSpec(module, spec, NULL);
    if (type == NULL) {
        return -1;
    }
    *slot = type; /* the state's reference */
    return PyModule_AddObjectRef(module, name, type); /* the module takes its own */
}

int
metalio_stream_exec(PyObject *module)
{
    metalio_state *state = (metalio_state *)PyModule_GetState(module);
    PyMethodDef *def;
    if (add_type(module, "StreamCore", &stream_spec, &state->stream_type) < 0 ||
        add_type(module, "EpochCore", &epoch_spec, &state->epoch_type) < 0) {
        return -1;
    }
    for (def = stream_calls; def->ml_name != NULL; def++) {
        PyObject *descriptor = PyDescr_NewMethod((PyTypeObject *)state->stream_type, def);
        if (descriptor == NULL) {
            return -1;
        }
        if (PyModule_AddObjectRef(module, def->ml_name, descriptor) < 0) {
            Py_DECREF(descriptor);
            return -1;
        }
        Py_DECREF(descriptor);
    }
    return 0;
}
