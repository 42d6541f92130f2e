/* metalio._speedups, the stream half: the try_* calls of the source base type.
 *
 * Owns: the four stream calls, try_read, try_read_into, try_write and
 * try_writev, on StreamCore's slots (the type is _speedups_stream_type.c's,
 * the epoch _speedups_epoch.c's).  They are exported as method
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

/* What a size-returning call answers for a METALIO_* outcome: the count,
 * None after the would-block funnel, or NULL with the exception set. */
static PyObject *
answer(StreamCore *self, Py_ssize_t outcome, int direction, const Before *before)
{
    if (outcome >= 0) {
        return PyLong_FromSsize_t(outcome);
    }
    if (outcome == METALIO_WOULD_BLOCK && would_block(self, direction, before) == 0) {
        Py_RETURN_NONE;
    }
    return NULL;
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
            return answer(self, got, DIRECTION_READ, &before); /* None or an exception */
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
        return answer(self, got, DIRECTION_READ, &before); /* None or an exception */
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
    return answer(self, got, DIRECTION_READ, &before);
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
    return answer(self, put, DIRECTION_WRITE, &before);
}

static PyObject *
stream_try_writev(PyObject *op, PyTypeObject *defining_class, PyObject *const *args,
                  Py_ssize_t nargs, PyObject *kwnames)
{
    StreamCore *self = (StreamCore *)op;
    PyObject *buffers = NULL;
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
    return answer(self, metalio_gather_write(before.fd, buffers), DIRECTION_WRITE, &before);
}

#define STREAM_CALL (METH_METHOD | METH_FASTCALL | METH_KEYWORDS)

PyMethodDef metalio_stream_calls[] = {
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
