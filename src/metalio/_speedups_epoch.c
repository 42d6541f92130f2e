/* metalio._speedups, the epoch half: EpochCore, the C version of metalio._readiness.Epoch.
 *
 * Owns: the epoch's value (``now``, read by the stream calls straight from
 * the struct) and ``advance()``, which the loop's dispatcher and Poll.poll
 * call once per batch of events.  The rules are metalio._readiness's: values come from one
 * counter and are never reused.
 *
 * Must not know: sources, marks, how waits happen.
 */

#include "_speedups.h"

#include <stddef.h>

#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_DOUBLE T_DOUBLE
#endif

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

int
metalio_epoch_exec(PyObject *module, PyObject **slot)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &epoch_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    *slot = type; /* the state's reference */
    return PyModule_AddObjectRef(module, "EpochCore", type);
}
