/*
 * cowprof._native: the one piece of interpreter state it reads that no public header declares, in
 * a file of its own because reading it takes CPython's internal headers (Py_BUILD_CORE), which the
 * rest of the module must not be compiled with.
 *
 * CPython 3.12 gives a function created without a version (types.FunctionType, PyFunction_New, or
 * one whose __code__, __defaults__, __kwdefaults__ or __annotations__ was set) its first one at the
 * first specialized call to it, from the interpreter's counter func_state.next_version
 * (_PyFunction_GetVersionForCurrentState in Objects/funcobject.c, not exported): in a pre-fork
 * worker that is a write into the master's function object. cp_function_version_counter() is that
 * counter, read through the headers of the interpreter this file is compiled against; cowprof
 * checks at run time that the interpreter really draws versions from it before using it
 * (cowprof/function_versions.py). NULL on every other version: 3.13+ version functions at creation.
 */
#include <patchlevel.h>
#include <stdint.h>
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x030D0000
#  define Py_BUILD_CORE 1
#  include <Python.h>
#  include <internal/pycore_interp.h>
uint32_t *cp_function_version_counter(void) {
    return &PyInterpreterState_Get()->func_state.next_version;
}
#else
#  include <Python.h>
uint32_t *cp_function_version_counter(void) {
    return NULL;
}
#endif
