"""The job stores, one module per backend: ``sqlite`` (embedded, one process) and
``postgres`` (shared by replicas). :func:`cms_sync.storage.open_storage` picks one."""
