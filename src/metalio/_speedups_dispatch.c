/* metalio._speedups, the loop half: the event loop's I/O phase for unique fds.
 *
 * Owns: dispatch_unique, the C version of
 * metalio._io_dispatch.IoDispatcher._dispatch_unique, which stays the
 * reference.  One batch of (fd, native_mask) pairs from a backend that names
 * every fd at most once, while no token is shared: per pair, the token and
 * the readiness table come from the dispatch index's two lists, a mask above
 * closing_above reports a closing bit (closing_event(fd)), and the event
 * becomes ready(loop, token, table[mask]), or internal(token) for a
 * reserved (negative) token.  First of all the readiness epoch, if there is
 * one, advances (metalio._readiness).
 *
 * When a call raises, the event being handled counts as delivered: the
 * function calls keep_after(raw, fd) with the exception set aside, then
 * lets it propagate (API section 5: nothing lost or delivered twice).
 *
 * Must not know: what tokens mean, how the index is kept, how the batch was
 * waited for.
 */

#include "_speedups.h"


/* A pair of the batch as a new reference to a 2-tuple (a backend's own
 * tuple, or any other pair converted), or NULL with the exception that
 * ``for fd, mask in raw`` would raise. */
static PyObject *
as_pair(PyObject *item)
{
    PyObject *pair;
    if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 2) {
        return Py_NewRef(item);
    }
    pair = PySequence_Tuple(item);
    if (pair != NULL && PyTuple_GET_SIZE(pair) != 2) {
        PyErr_Format(PyExc_ValueError, "expected 2 values to unpack (got %zd)",
                     PyTuple_GET_SIZE(pair));
        Py_CLEAR(pair);
    }
    return pair;
}

/* Whether *token* is reserved (negative); -1 with an exception. */
static int
is_reserved(PyObject *token)
{
    int overflow = 0;
    long value = PyLong_AsLongAndOverflow(token, &overflow);
    if (value == -1 && overflow == 0 && PyErr_Occurred()) {
        return -1;
    }
    return overflow < 0 || (overflow == 0 && value < 0);
}

/* The pending exception, set aside while other code runs. */
typedef struct {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc;
#else
    PyObject *type, *value, *traceback;
#endif
} Pending;

static void
set_aside(Pending *pending)
{
#if PY_VERSION_HEX >= 0x030C0000
    pending->exc = PyErr_GetRaisedException();
#else
    PyErr_Fetch(&pending->type, &pending->value, &pending->traceback);
#endif
}

static void
restore(Pending *pending)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(pending->exc);
#else
    PyErr_Restore(pending->type, pending->value, pending->traceback);
#endif
}

static void
drop(Pending *pending)
{
#if PY_VERSION_HEX >= 0x030C0000
    Py_XDECREF(pending->exc);
#else
    Py_XDECREF(pending->type);
    Py_XDECREF(pending->value);
    Py_XDECREF(pending->traceback);
#endif
}

/* keep_after(raw, fd) with the pending exception set aside, then the
 * exception again; an exception of keep_after itself replaces it. */
static void
keep_rest(PyObject *keep_after, PyObject *raw, long fd)
{
    Pending pending;
    PyObject *fd_obj, *result = NULL;
    set_aside(&pending);
    fd_obj = PyLong_FromLong(fd);
    if (fd_obj != NULL) {
        result = PyObject_CallFunctionObjArgs(keep_after, raw, fd_obj, NULL);
        Py_DECREF(fd_obj);
    }
    if (result == NULL) {
        drop(&pending);
        return;
    }
    Py_DECREF(result);
    restore(&pending);
}

/* The dispatcher's own arguments, fixed for its lifetime, in one tuple that
 * the loop passes first (IoDispatcher.dispatch_unique is the pair). */
enum { FIX_TOKENS, FIX_TABLES, FIX_CLOSING_ABOVE, FIX_INTERNAL, FIX_CLOSING_EVENT,
       FIX_KEEP_AFTER, FIX_EPOCH, FIX_COUNT };

const char metalio_dispatch_unique_doc[] = PyDoc_STR(
"dispatch_unique(fixed, loop, raw, ready, /)\n--\n\n"
"The loop's I/O phase for a batch whose fds are unique and whose tokens are\n"
"not shared: the C version of IoDispatcher._dispatch_unique.  fixed is the\n"
"dispatcher's (tokens, tables, closing_above, internal, closing_event,\n"
"keep_after, epoch).");

PyObject *
metalio_dispatch_unique(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *fixed, *loop, *raw, *ready_call, *tokens, *tables;
    PyObject *internal, *closing_event, *keep_after;
    long long closing_above;
    Py_ssize_t i;
    long fd = -1;

    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "dispatch_unique() takes exactly 4 arguments (%zd given)",
                     nargs);
        return NULL;
    }
    fixed = args[0];
    loop = args[1];
    raw = args[2];
    ready_call = args[3];
    if (!PyTuple_CheckExact(fixed) || PyTuple_GET_SIZE(fixed) != FIX_COUNT ||
        !PyList_CheckExact(PyTuple_GET_ITEM(fixed, FIX_TOKENS)) ||
        !PyList_CheckExact(PyTuple_GET_ITEM(fixed, FIX_TABLES))) {
        PyErr_SetString(PyExc_TypeError, "dispatch_unique() needs the dispatcher's tuple");
        return NULL;
    }
    tokens = PyTuple_GET_ITEM(fixed, FIX_TOKENS);
    tables = PyTuple_GET_ITEM(fixed, FIX_TABLES);
    internal = PyTuple_GET_ITEM(fixed, FIX_INTERNAL);
    closing_event = PyTuple_GET_ITEM(fixed, FIX_CLOSING_EVENT);
    keep_after = PyTuple_GET_ITEM(fixed, FIX_KEEP_AFTER);
    if (!PyList_Check(raw)) {
        /* Backends return lists; anything else is copied once into one. */
        PyObject *copy = PySequence_List(raw);
        PyObject *result;
        PyObject *call[4] = {fixed, loop, NULL, ready_call};
        if (copy == NULL) {
            return NULL;
        }
        call[2] = copy;
        result = metalio_dispatch_unique(module, call, 4);
        Py_DECREF(copy);
        return result;
    }
    closing_above = PyLong_AsLongLong(PyTuple_GET_ITEM(fixed, FIX_CLOSING_ABOVE));
    if (closing_above == -1 && PyErr_Occurred()) {
        return NULL;
    }
    /* A wait returned events: no drained mark made before may match now. */
    if (metalio_epoch_advance(module, PyTuple_GET_ITEM(fixed, FIX_EPOCH)) < 0) {
        return NULL;
    }
    /* The list is the backend's and no handler can reach it, but its size is
     * read again on every step all the same, and every item is held while
     * it is used. */
    for (i = 0; i < PyList_GET_SIZE(raw); i++) {
        PyObject *pair = as_pair(PyList_GET_ITEM(raw, i));
        PyObject *mask, *token, *table, *ready, *result;
        long long mask_value;
        long number;
        int reserved;

        if (pair == NULL) {
            goto failed;
        }
        number = PyLong_AsLong(PyTuple_GET_ITEM(pair, 0));
        if (number == -1 && PyErr_Occurred()) {
            Py_DECREF(pair);
            goto failed;
        }
        fd = number;
        mask = PyTuple_GET_ITEM(pair, 1);
        if (fd < 0 || fd >= PyList_GET_SIZE(tokens)) {
            Py_DECREF(pair); /* never registered (a fake backend) */
            continue;
        }
        mask_value = PyLong_AsLongLong(mask);
        if (mask_value == -1 && PyErr_Occurred()) {
            Py_DECREF(pair);
            goto failed;
        }
        token = Py_NewRef(PyList_GET_ITEM(tokens, fd));
        if (mask_value > closing_above) {
            /* A closing bit: readiness tracking off for the source first. */
            PyObject *fd_obj = PyLong_FromLong(fd);
            result = fd_obj == NULL ? NULL : PyObject_CallOneArg(closing_event, fd_obj);
            Py_XDECREF(fd_obj);
            if (result == NULL) {
                Py_DECREF(token);
                Py_DECREF(pair);
                goto failed;
            }
            Py_DECREF(result);
        }
        reserved = is_reserved(token);
        if (reserved < 0) {
            Py_DECREF(token);
            Py_DECREF(pair);
            goto failed;
        }
        if (reserved) {
            result = PyObject_CallOneArg(internal, token);
        }
        else {
            /* A table is always stored before its token (the index's rule). */
            table = fd < PyList_GET_SIZE(tables) ? PyList_GET_ITEM(tables, fd) : Py_None;
            Py_INCREF(table);
            ready = PyDict_CheckExact(table) ? PyDict_GetItemWithError(table, mask) : NULL;
            if (ready != NULL) {
                Py_INCREF(ready);
            }
            else if (!PyErr_Occurred()) {
                ready = PyObject_GetItem(table, mask); /* a lazy table fills itself */
            }
            Py_DECREF(table);
            if (ready == NULL) {
                result = NULL;
            }
            else {
                /* The spare first slot lets a bound method put its self
                 * there instead of copying the arguments. */
                PyObject *call[4] = {NULL, loop, token, ready};
                result = PyObject_Vectorcall(ready_call, call + 1,
                                             3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
                Py_DECREF(ready);
            }
        }
        Py_DECREF(token);
        Py_DECREF(pair);
        if (result == NULL) {
            goto failed;
        }
        Py_DECREF(result);
    }
    Py_RETURN_NONE;

failed:
    keep_rest(keep_after, raw, fd);
    return NULL;
}
