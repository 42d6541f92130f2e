/* What the parts of metalio._speedups share.
 *
 * _speedups.c owns the system calls (one loop each, EINTR and errno handled
 * once) and the module; _speedups_stream_type.c the stream source base type
 * and the module's state; _speedups_stream.c its try_* calls, which keep
 * readiness tracking; _speedups_epoch.c the readiness epoch.  Nothing here
 * is visible to Python.
 */
#ifndef METALIO_SPEEDUPS_H
#define METALIO_SPEEDUPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>

/* The most bytes one read asks for: matches metalio._source.READ_LIMIT.
 * read() allocates n bytes before the call, so larger requests are clamped
 * (a read may always return fewer bytes than asked). */
#define METALIO_READ_LIMIT ((Py_ssize_t)1 << 24)

#ifdef IOV_MAX
#define METALIO_IOV_MAX IOV_MAX
#else
#define METALIO_IOV_MAX 1024
#endif

/* The outcome of one system call, for the caller to turn into a value:
 * >= 0 done; METALIO_WOULD_BLOCK (no exception set); METALIO_RAISED
 * (exception set). */
#define METALIO_WOULD_BLOCK (-1)
#define METALIO_RAISED (-2)

/* Free-threaded builds: a critical section on the source object around the
 * reads of its object slots (another thread may replace _epoch or _rearm
 * and drop the old reference), and relaxed atomics for the marks (plain
 * doubles written without a lock by the attribute setters).  With the GIL
 * every one of these is a plain statement. */
#ifdef Py_GIL_DISABLED
#define METALIO_LOCK(obj) Py_BEGIN_CRITICAL_SECTION(obj)
#define METALIO_UNLOCK() Py_END_CRITICAL_SECTION()
#define METALIO_LOAD_DOUBLE(src, dst) __atomic_load((src), (dst), __ATOMIC_RELAXED)
#define METALIO_STORE_DOUBLE(dst, value)                                                  \
    do {                                                                                  \
        double metalio_value_ = (value);                                                  \
        __atomic_store((dst), &metalio_value_, __ATOMIC_RELAXED);                         \
    } while (0)
#else
#define METALIO_LOCK(obj) {
#define METALIO_UNLOCK() }
#define METALIO_LOAD_DOUBLE(src, dst) (*(dst) = *(src))
#define METALIO_STORE_DOUBLE(dst, value) (*(dst) = (value))
#endif

/* The descriptor argument, as os.read converts it. */
int metalio_fd_from_object(PyObject *obj, int *fd);

/* The size argument of a read: ValueError below 1, clamped above the limit. */
int metalio_size_from_object(PyObject *obj, Py_ssize_t *size);

/* One system call each, the GIL released around it, EINTR retried after
 * PyErr_CheckSignals(); a METALIO_* outcome or the count. */
Py_ssize_t metalio_do_read(int fd, void *buf, size_t len);
Py_ssize_t metalio_do_write(int fd, const void *buf, size_t len);

/* writev(2) of the first IOV_MAX items of a sequence of bytes-like objects:
 * the outcome or the count; every buffer taken is released. */
Py_ssize_t metalio_gather_write(int fd, PyObject *seq);

/* The C layout of metalio._fdio.FdState: the base of every source type
 * (_speedups_stream_type.c), whose four stream calls are
 * _speedups_stream.c's. */
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

/* The stream calls, made into method descriptors of StreamCore by the type's
 * module part (NULL-terminated). */
extern PyMethodDef metalio_stream_calls[];

/* The C layout of metalio._readiness.Epoch (_speedups_epoch.c): the stream
 * calls read ``now`` straight from it. */
typedef struct {
    PyObject_HEAD
    double now;              /* changes whenever a wait of the tracking Poll returns */
    unsigned long long taken; /* the last value advance() took */
} EpochCore;

/* Creates EpochCore, adds it to the module and stores it in *slot*. */
int metalio_epoch_exec(PyObject *module, PyObject **slot);

/* The module's state: its two heap types. */
typedef struct {
    PyObject *stream_type; /* StreamCore */
    PyObject *epoch_type;  /* EpochCore */
} metalio_state;

int metalio_state_traverse(PyObject *module, visitproc visit, void *arg);
int metalio_state_clear(PyObject *module);
void metalio_state_free(void *module);

/* Adds the stream types (StreamCore, EpochCore) and their method
 * descriptors to the module; 0 or -1 with an exception. */
int metalio_stream_exec(PyObject *module);

#endif /* METALIO_SPEEDUPS_H */
