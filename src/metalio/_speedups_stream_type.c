/* metalio._speedups, the type half: StreamCore itself and the module's state.
 *
 * Owns: the StreamCore heap type (creation, the members that make its C
 * struct the Python slots _fd, _polls, _rearm, _epoch, _rmark, _wmark, GC
 * support), the module state holding the two heap types, and the module's
 * stream part of exec: the types and the four stream calls as method
 * descriptors (metalio._speedups.try_read ...).  The calls themselves are
 * _speedups_stream.c's.
 *
 * Must not know: what the calls do with the slots.
 */

#include "_speedups.h"

#include <stddef.h>

#if PY_VERSION_HEX < 0x030C0000
#include <structmember.h>
#define Py_T_INT T_INT
#define Py_T_DOUBLE T_DOUBLE
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif

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
        metalio_epoch_exec(module, &state->epoch_type) < 0) {
        return -1;
    }
    for (def = metalio_stream_calls; def->ml_name != NULL; def++) {
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
