/*
 * cowprof._native: the interpreter state it reads that no public header declares, in a file of its
 * own because reading it takes CPython's internal headers (Py_BUILD_CORE), which the rest of the
 * module must not be compiled with. Everything here is read through the internal headers of the
 * interpreter this file is compiled against, and cowprof checks at run time that the interpreter
 * behaves as those headers say before it relies on a value (cowprof/function_versions.py,
 * cowprof/key_tables.py).
 *
 * - cp_function_version_counter(): CPython 3.12 gives a function created without a version
 *   (types.FunctionType, PyFunction_New, or one whose __code__, __defaults__, __kwdefaults__ or
 *   __annotations__ was set) its first one at the first specialized call to it, from the
 *   interpreter's counter func_state.next_version (_PyFunction_GetVersionForCurrentState in
 *   Objects/funcobject.c, not exported): in a pre-fork worker that is a write into the master's
 *   function object. NULL on every other version: 3.13+ version functions at creation.
 * - cp_keys_refcnt(): where the reference count of a dict-keys table is (dk_refcnt, the first
 *   field of struct _dictkeysobject in pycore_dict.h). The key table that the instances of a class
 *   share (ht_cached_keys) is counted each time an instance's attributes become a dict of their
 *   own (obj.__dict__, vars(obj)) and again when that dict is freed; a table whose count is the
 *   interpreter's immortal value (that of its static empty table, Py_EMPTY_KEYS) is never counted.
 * - cp_keys_version() / cp_keys_version_counter(): a key table's version (dk_version) and the
 *   interpreter's counter it comes from (dict_state.next_keys_version). The specializer gives a
 *   module's globals table and a class's shared table a version the first time code depending on
 *   it is specialized (_PyDictKeys_GetVersionForCurrentState in Objects/dictobject.c): in a worker,
 *   a write into the master's table.
 */
#include <patchlevel.h>
#include <stdint.h>
#if PY_VERSION_HEX >= 0x030C0000 && PY_VERSION_HEX < 0x03100000 && !defined(Py_GIL_DISABLED)
#  define Py_BUILD_CORE 1
#  include <Python.h>
#  include <internal/pycore_interp.h>
#  include <internal/pycore_dict.h>

uint32_t *cp_function_version_counter(void) {
#  if PY_VERSION_HEX < 0x030D0000
    return &PyInterpreterState_Get()->func_state.next_version;
#  else
    return NULL;
#  endif
}

Py_ssize_t *cp_keys_refcnt(PyDictKeysObject *keys) {
    return keys == NULL ? NULL : &keys->dk_refcnt;
}

uint32_t *cp_keys_version(PyDictKeysObject *keys) {
    return keys == NULL ? NULL : &keys->dk_version;
}

uint32_t *cp_keys_version_counter(void) {
    return &PyInterpreterState_Get()->dict_state.next_keys_version;
}
#else
#  include <Python.h>
uint32_t *cp_function_version_counter(void) {
    return NULL;
}

Py_ssize_t *cp_keys_refcnt(PyDictKeysObject *keys) {
    return NULL;
}

uint32_t *cp_keys_version(PyDictKeysObject *keys) {
    return NULL;
}

uint32_t *cp_keys_version_counter(void) {
    return NULL;
}
#endif
