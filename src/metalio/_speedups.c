/* metalio._speedups: the descriptor calls of the hot path, below the interpreter.
 *
 * Owns: four functions, read/readinto/write/writev on a raw descriptor, that
 * behave as os.read/os.readv/os.write/os.writev do except that the kernel's
 * would-block (EAGAIN/EWOULDBLOCK) returns None instead of building and
 * raising BlockingIOError.  Every other failure raises the OSError subclass
 * CPython builds from errno (ConnectionResetError, BrokenPipeError, ...).
 *
 * Must not know: sources, registries, readiness marks, rearm hooks.  Those
 * belong to the Python layer (metalio._fdio, metalio.net); this module is the
 * system call and nothing else.  metalio._speedups_loader holds the
 * pure-Python reference with the same behaviour; tests/test_speedups.py runs
 * every test against both.
 *
 * Shared conventions, as PEP 475 and os.read have them:
 *  - the GIL is released around each system call;
 *  - EINTR retries after PyErr_CheckSignals(), and an exception raised by a
 *    Python signal handler propagates instead;
 *  - every Py_buffer taken is released on every path.
 * The functions share no state, so the module declares Py_MOD_GIL_NOT_USED
 * where that slot exists (free-threaded CPython).
 */

#include "_speedups.h"

#include <errno.h>
#include <sys/uio.h>
#include <unistd.h>

/* writev with at most this many buffers keeps its arrays on the stack; more
 * go to the heap (IOV_MAX Py_buffers are ~80 KiB, too much for a small
 * thread stack). */
#define METALIO_IOV_STACK 16

static inline int
is_would_block(int err)
{
#if defined(EWOULDBLOCK) && EWOULDBLOCK != EAGAIN
    return err == EAGAIN || err == EWOULDBLOCK;
#else
    return err == EAGAIN;
#endif
}

/* The descriptor argument, as os.read converts it: an int (or __index__),
 * OverflowError outside C int, TypeError otherwise.  A negative number goes
 * to the kernel, which answers EBADF. */
int
metalio_fd_from_object(PyObject *obj, int *fd)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value > INT_MAX || value < INT_MIN) {
        PyErr_SetString(PyExc_OverflowError, "Python int too large to convert to C int");
        return -1;
    }
    *fd = (int)value;
    return 0;
}

/* The size argument of read(): ValueError below 1, clamped to the read limit
 * above it, whatever the int's magnitude. */
int
metalio_size_from_object(PyObject *obj, Py_ssize_t *size)
{
    int overflow = 0;
    long long value;
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL) {
        return -1;
    }
    value = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (value == -1 && overflow == 0 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow < 0 || (overflow == 0 && value < 1)) {
        PyErr_SetString(PyExc_ValueError,
                        "try_read needs n >= 1 (b'' would mean end of stream)");
        return -1;
    }
    if (overflow > 0 || value > (long long)METALIO_READ_LIMIT) {
        *size = METALIO_READ_LIMIT;
    }
    else {
        *size = (Py_ssize_t)value;
    }
    return 0;
}

static int
check_nargs(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s() takes exactly %zd arguments (%zd given)", name,
                     expected, nargs);
        return -1;
    }
    return 0;
}

static Py_ssize_t
finish_error(int err)
{
    if (is_would_block(err)) {
        return METALIO_WOULD_BLOCK;
    }
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    return METALIO_RAISED;
}

Py_ssize_t
metalio_do_read(int fd, void *buf, size_t len)
{
    ssize_t got;
    int err;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        got = read(fd, buf, len);
        err = errno;
        Py_END_ALLOW_THREADS
        if (got >= 0) {
            return (Py_ssize_t)got;
        }
        if (err != EINTR) {
            return finish_error(err);
        }
        if (PyErr_CheckSignals() < 0) {
            return METALIO_RAISED;
        }
    }
}

Py_ssize_t
metalio_do_write(int fd, const void *buf, size_t len)
{
    ssize_t put;
    int err;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        put = write(fd, buf, len);
        err = errno;
        Py_END_ALLOW_THREADS
        if (put >= 0) {
            return (Py_ssize_t)put;
        }
        if (err != EINTR) {
            return finish_error(err);
        }
        if (PyErr_CheckSignals() < 0) {
            return METALIO_RAISED;
        }
    }
}

static Py_ssize_t
do_writev(int fd, const struct iovec *iov, int count)
{
    ssize_t put;
    int err;
    for (;;) {
        Py_BEGIN_ALLOW_THREADS
        put = writev(fd, iov, count);
        err = errno;
        Py_END_ALLOW_THREADS
        if (put >= 0) {
            return (Py_ssize_t)put;
        }
        if (err != EINTR) {
            return finish_error(err);
        }
        if (PyErr_CheckSignals() < 0) {
            return METALIO_RAISED;
        }
    }
}

static PyObject *
size_result(Py_ssize_t result)
{
    if (result >= 0) {
        return PyLong_FromSsize_t(result);
    }
    if (result == METALIO_WOULD_BLOCK) {
        Py_RETURN_NONE;
    }
    return NULL;
}

PyDoc_STRVAR(read_doc,
"read(fd, n, /)\n--\n\n"
"Read at most n bytes from fd: data, b'' at end of stream, None if none yet.\n\n"
"n above 16 MiB is read as 16 MiB.\n\n"
"Raises ValueError (n < 1), TypeError (fd or n not an int), OverflowError\n"
"(fd outside C int), OSError (a real failure; EBADF for a closed or\n"
"negative fd).");

static PyObject *
speedups_read(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_ssize_t size, got;
    PyObject *bytes;

    if (check_nargs("read", nargs, 2) < 0 || metalio_fd_from_object(args[0], &fd) < 0 ||
        metalio_size_from_object(args[1], &size) < 0) {
        return NULL;
    }
    bytes = PyBytes_FromStringAndSize(NULL, size);
    if (bytes == NULL) {
        return NULL;
    }
    got = metalio_do_read(fd, PyBytes_AS_STRING(bytes), (size_t)size);
    if (got < 0) {
        Py_DECREF(bytes);
        if (got == METALIO_WOULD_BLOCK) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    if (got != size && _PyBytes_Resize(&bytes, got) < 0) {
        return NULL; /* _PyBytes_Resize released the object */
    }
    return bytes;
}

PyDoc_STRVAR(readinto_doc,
"readinto(fd, buffer, /)\n--\n\n"
"Read into the writable C-contiguous buffer: bytes read, 0 at end of stream,\n"
"None if nothing yet.\n\n"
"Raises TypeError (not a writable contiguous bytes-like object, fd not an\n"
"int), ValueError (an empty buffer: 0 would mean end of stream), OSError\n"
"(a real failure).");

static PyObject *
speedups_readinto(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_buffer view;
    Py_ssize_t got;

    if (check_nargs("readinto", nargs, 2) < 0 || metalio_fd_from_object(args[0], &fd) < 0) {
        return NULL;
    }
    /* The flags os.readv uses: a read-only or non-contiguous buffer fails as
     * BufferError there, which metalio reports as TypeError. */
    if (PyObject_GetBuffer(args[1], &view, PyBUF_WRITABLE) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_SetString(PyExc_TypeError, "try_read_into needs a writable buffer");
        }
        return NULL;
    }
    got = metalio_do_read(fd, view.buf, (size_t)view.len);
    if (got == 0 && view.len == 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError,
                        "try_read_into needs a non-empty buffer (0 would mean end of stream)");
        return NULL;
    }
    PyBuffer_Release(&view);
    return size_result(got);
}

PyDoc_STRVAR(write_doc,
"write(fd, data, /)\n--\n\n"
"Write some of the C-contiguous bytes-like data: the number of bytes taken\n"
"(maybe fewer), None if none.\n\n"
"Raises TypeError (not bytes-like, fd not an int), BufferError (not\n"
"C-contiguous, as os.write), OSError (a real failure: BrokenPipeError, ...).");

static PyObject *
speedups_write(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;
    Py_buffer view;
    Py_ssize_t put;

    if (check_nargs("write", nargs, 2) < 0 || metalio_fd_from_object(args[0], &fd) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(args[1], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    put = metalio_do_write(fd, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return size_result(put);
}

PyDoc_STRVAR(writev_doc,
"writev(fd, buffers, /)\n--\n\n"
"Gather-write a sequence of bytes-like objects in one writev(2): the total\n"
"number of bytes taken (maybe ending inside any buffer), None if none.  At\n"
"most IOV_MAX buffers are used; the rest are for the next call.\n\n"
"Raises TypeError (not a sequence, an item not bytes-like, fd not an int),\n"
"BufferError (an item not C-contiguous), OSError (a real failure).");

Py_ssize_t
metalio_gather_write(int fd, PyObject *seq)
{
    Py_ssize_t length, count, taken = 0, i;
    Py_ssize_t result = METALIO_RAISED;
    struct iovec iov_stack[METALIO_IOV_STACK];
    Py_buffer view_stack[METALIO_IOV_STACK];
    struct iovec *iov = iov_stack;
    Py_buffer *views = view_stack;

    if (!PySequence_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "writev() arg 2 must be a sequence");
        return METALIO_RAISED;
    }
    length = PySequence_Size(seq);
    if (length < 0) {
        return METALIO_RAISED;
    }
    count = length < METALIO_IOV_MAX ? length : METALIO_IOV_MAX;
    if (count > METALIO_IOV_STACK) {
        iov = PyMem_New(struct iovec, (size_t)count);
        views = PyMem_New(Py_buffer, (size_t)count);
        if (iov == NULL || views == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (taken = 0; taken < count; taken++) {
        /* A sequence may shrink while its items are fetched (another thread,
         * a __getitem__ that mutates): IndexError then, as os.writev. */
        PyObject *item = PySequence_GetItem(seq, taken);
        int failed;
        if (item == NULL) {
            goto done;
        }
        failed = PyObject_GetBuffer(item, &views[taken], PyBUF_SIMPLE);
        Py_DECREF(item); /* the Py_buffer holds its own reference */
        if (failed < 0) {
            goto done;
        }
        iov[taken].iov_base = views[taken].buf;
        iov[taken].iov_len = (size_t)views[taken].len;
    }
    result = do_writev(fd, iov, (int)count);
done:
    for (i = 0; i < taken; i++) {
        PyBuffer_Release(&views[i]);
    }
    if (iov != iov_stack) {
        PyMem_Free(iov);
    }
    if (views != view_stack) {
        PyMem_Free(views);
    }
    return result;
}

static PyObject *
speedups_writev(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    int fd;

    if (check_nargs("writev", nargs, 2) < 0 || metalio_fd_from_object(args[0], &fd) < 0) {
        return NULL;
    }
    return size_result(metalio_gather_write(fd, args[1]));
}

static PyMethodDef speedups_methods[] = {
    {"read", (PyCFunction)(void (*)(void))speedups_read, METH_FASTCALL, read_doc},
    {"readinto", (PyCFunction)(void (*)(void))speedups_readinto, METH_FASTCALL, readinto_doc},
    {"write", (PyCFunction)(void (*)(void))speedups_write, METH_FASTCALL, write_doc},
    {"writev", (PyCFunction)(void (*)(void))speedups_writev, METH_FASTCALL, writev_doc},
    {NULL, NULL, 0, NULL},
};

static int
speedups_exec(PyObject *module)
{
    if (PyModule_AddIntConstant(module, "IOV_MAX", METALIO_IOV_MAX) < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(module, "READ_LIMIT", (long)METALIO_READ_LIMIT) < 0) {
        return -1;
    }
    return metalio_stream_exec(module);
}

static PyModuleDef_Slot speedups_slots[] = {
    {Py_mod_exec, (void *)speedups_exec},
#ifdef Py_mod_multiple_interpreters
    /* Every type is a heap type of the module's own, and the state is per
     * module object: safe in every subinterpreter. */
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#ifdef Py_mod_gil
    /* No shared mutable state; the buffers are pinned by Py_buffer exports,
     * and the stream type guards its object slots (see _speedups.h). */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

PyDoc_STRVAR(module_doc,
"metalio's descriptor calls in C: read, readinto, write, writev on a raw fd,\n"
"returning None on would-block without raising, and the stream source base\n"
"type whose try_* methods keep readiness tracking.  Use\n"
"metalio._speedups_loader, which falls back to the pure-Python equivalents.");

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "metalio._speedups",
    module_doc,
    (Py_ssize_t)sizeof(metalio_state),
    speedups_methods,
    speedups_slots,
    metalio_state_traverse,
    metalio_state_clear,
    metalio_state_free,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModuleDef_Init(&speedups_module);
}
